"""Evaluate a finished stage of a run (default: its last finished one) or a weights file.

    python evaluate.py --config table1/camvid/row5                        # last finished stage
    python evaluate.py --config table1/camvid/row5 --stage student data.eval_split=val
    python evaluate.py --config demo --weights path/to/weights.pth --save-predictions preds/
    python evaluate.py --config demo --images my_photos/ --save-predictions preds/
    torchrun --nproc_per_node 4 evaluate.py --config table1/camvid/row5

Evaluates on `data.eval_split` as `eval.*` says (whole image / sliding window, scales, flip), prints
the per-class IoU table and mIoU, and writes `eval_<split>.json` (`miou` in percent and
`per_class_iou`, as in summary.json) into the evaluated stage's folder — for `--weights`, the
folder of the weights file when it is a stage of a run, else the current folder.
`--save-predictions DIR` writes `<id>.png` (class ids 0..C-1) and `<id>_color.png` for every
evaluated image; `--images DIR` predicts a folder of unlabeled images instead (no metrics).
Predictions are at the working resolution (`data.resize` when set). With torchrun every rank
evaluates (and writes the predictions of) its shard; rank 0 prints and writes the metrics.
"""
import os

# OpenMP threads that spin while they wait make every conv ~20x slower as soon as another
# process (a data loader worker, a second rank) wants the same cores. Set before torch is
# imported; an explicit environment value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from datasets import dataset_classes, dataset_palette  # noqa: E402
from datasets.camvid import is_list_file  # noqa: E402
from datasets.source import IMAGE_SUFFIXES  # noqa: E402
from datasets.source import check_utf8_name, read_rgb, resize_pair  # noqa: E402
from core import checkpoint as ckpt  # noqa: E402
from engine import data as data_utils  # noqa: E402
from core import distributed  # noqa: E402
from engine.evaluation import evaluate  # noqa: E402
from engine.inference import config_settings, predict_loader  # noqa: E402
from core.io import atomic_write_index_png, atomic_write_json, atomic_write_png, flat_name  # noqa: E402
from datasets.classes import colorize  # noqa: E402
from models.build import make_model  # noqa: E402
from core.precision import configure_backends, resolve_amp  # noqa: E402
from core.cli import exit_on_input_error, fail, load_config_or_exit  # noqa: E402
from al.rundir import RunDirectory  # noqa: E402
from engine.scan import scan_source  # noqa: E402
from models.build import transfer_weights  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config name under configs/ or a YAML path")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stage", help="stage name (or its NN_name folder) of the config's run; "
                                       "default: the last finished stage")
    which.add_argument("--weights", help="a weights file: a run's weights.pth or a plain state dict")
    parser.add_argument("--save-predictions", metavar="DIR",
                        help="write <id>.png (class ids) and <id>_color.png for every image")
    parser.add_argument("--images", metavar="DIR",
                        help="predict the png/jpg images of DIR (no labels, no metrics); "
                             "needs --save-predictions")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return parser.parse_intermixed_args()  # overrides may stand before or after the options


# --------------------------------------------------------------------------- which weights
def stage_weights(cfg, stage: str | None) -> tuple[Path, str]:
    """(weights.pth, stage name) of a finished stage of the config's run directory."""
    run = Path(cfg.output_dir)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"no run of config {cfg.name!r} at {run} (train it first, or pass --weights)")
    folders = {name: run / RunDirectory.stage_folder(i, name) for i, name in enumerate(cfg.stages)}
    if stage is None:
        finished = [name for name, folder in folders.items() if RunDirectory.stage_done(folder)]
        if not finished:
            raise FileNotFoundError(f"run {run} has no finished stage yet")
        stage = finished[-1]
    by_folder = {folder.name: name for name, folder in folders.items()}
    name = by_folder.get(stage, stage)
    if name not in folders:
        raise ValueError(f"--stage {stage!r}: the stages of {cfg.name} are {list(folders)}")
    if not RunDirectory.stage_done(folders[name]):
        raise FileNotFoundError(f"--stage {name}: stage not finished (no metrics.json in {folders[name]})")
    return folders[name] / "weights.pth", name


def read_weights(path: Path) -> dict:
    """A state dict from a run's checksummed file (verified), or from a plain state-dict file.
    Anything else (a pickled model, a training checkpoint without its checksum) is refused."""
    if not path.is_file():
        raise FileNotFoundError(f"--weights: file not found: {path}")
    if Path(f"{path}.sha256").is_file():
        try:
            obj = ckpt.load_verified(path)
        except ckpt.CorruptCheckpoint as err:
            raise ValueError(str(err)) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise ValueError(f"{path}: checksummed file holds no 'model' state dict")
        return obj["model"]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any failure here means: not a plain tensor file (torch's text says why at length)
        raise ValueError(f"{path}: not a plain PyTorch state dict (torch.load with weights_only=True refused "
                         f"it: not a torch file, or it pickles Python objects besides tensors)") from None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        hint = (" (a run's weights.pth needs its .sha256 file beside it)"
                if isinstance(obj, dict) and "model" in obj else "")
        raise ValueError(f"{path}: expected a state dict (parameter name -> tensor){hint}")
    return obj


def output_folder(weights: Path, from_stage: bool) -> Path:
    """Where eval_<split>.json goes: the stage folder the weights belong to, else the cwd."""
    if from_stage or (weights.parent.parent / "config.yaml").is_file():
        return weights.parent
    return Path.cwd()


def build_model(cfg, state: dict, num_classes: int, weights: Path, ctx):
    """The config's model (no representation head: evaluation needs only the logits), strictly
    loaded; channels_last as in training, so the numbers equal the run's own evaluation."""
    model = make_model(cfg.model, num_classes, rep_head=False, noise=False, pretrained="none")
    try:
        transfer_weights(model, state)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not fit the model of {cfg.name} (DeepLabv3+ {cfg.model.backbone}, "
                         f"{num_classes} classes): {_one_line(err)}") from None
    model.to(ctx.device).eval()
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _one_line(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------- predictions
class ImageFolder(Dataset):
    """The png/jpg images of a folder (no labels), at the working resolution, as uint8 tensors."""

    def __init__(self, folder: Path, resize):
        if not folder.is_dir():
            raise FileNotFoundError(f"--images: folder not found: {folder}")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"--images: no .png/.jpg images in {folder}")
        for path in self.paths:
            check_utf8_name(path)  # its id names the prediction files
        self.ids = [p.stem for p in self.paths]
        if len(set(self.ids)) != len(self.ids):
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise ValueError(f"--images: two images named {dup!r} in {folder} (outputs would collide)")
        self.resize = tuple(resize) if resize else None

    def __len__(self) -> int:
        return len(self.paths)

    def check(self, indices) -> None:
        """Decode the images once before predicting: a bad file is then one clear error here,
        not an exception wrapped in a data-loader worker's traceback."""
        for i in indices:
            read_rgb(str(self.paths[i]))

    def __getitem__(self, i: int) -> dict:
        img = read_rgb(str(self.paths[i]))
        if self.resize is not None:  # the same interpolation as the data sources use
            img, _ = resize_pair(img, np.zeros(img.shape[:2], np.uint8), self.resize)
        return {"image": torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), "index": i}


def prediction_writer(ids, palette, out_dir: Path):
    """A callback (samples, probs) -> `<id>.png` (class ids) and `<id>_color.png` per image."""
    def write(group: dict, probs: torch.Tensor) -> None:
        preds = probs.argmax(1).to(torch.uint8).cpu().numpy()
        for index, pred in zip(group["index"].tolist(), preds):
            stem = flat_name(ids[index])
            atomic_write_index_png(out_dir / f"{stem}.png", pred, palette)  # ids, shown in the palette
            atomic_write_png(out_dir / f"{stem}_color.png", colorize(pred, palette))
    return write


def save_predictions(model, dataset, ids, num_classes: int, palette, out_dir: Path, cfg, ctx, amp: str) -> None:
    """This rank's shard of an unlabeled `dataset`, predicted exactly as the evaluation predicts
    (eval.* settings and batch size) and written by `prediction_writer`."""
    mine = distributed.shard(list(range(len(dataset))), ctx)
    loader = data_utils.ordered_loader(dataset, mine, cfg.eval.batch_size, ctx, workers=cfg.data.workers)
    settings = config_settings(cfg, scales=cfg.eval.scales, flip=cfg.eval.flip, amp=amp)
    write = prediction_writer(ids, palette, out_dir)
    for group, probs in predict_loader(model, loader, ctx.device, num_classes, settings,
                                       desc="predictions", show=ctx.is_main):
        write(group, probs)


# --------------------------------------------------------------------------- report
def split_label(split: str) -> str:
    """'val' -> 'val'; a list file 'splits/x/val.txt' -> 'val' (the eval_<split>.json name)."""
    return Path(split).stem if is_list_file(split) else split


def iou_table(metrics: dict) -> str:
    rows = [f"{'class':<20}{'IoU':>8}", "-" * 28]
    for name, iou in metrics["per_class_iou"].items():
        rows.append(f"{name:<20}{'-' if iou is None else f'{iou:.2f}':>8}")
    rows += ["-" * 28, f"{'mIoU':<20}{metrics['miou']:>8.2f}   pixel accuracy {metrics['pixel_acc']:.2f}   "
                       f"mAcc {metrics['macc']:.2f}"]
    return "\n".join(rows)


def prepare(args, cfg, ctx):
    """Everything checked before predicting (bad input fails here): weights, data (each image
    decoded once), model. Returns (model, weights path, stage name or None, data set, ids, palette)."""
    weights, stage = (Path(args.weights), None) if args.weights else stage_weights(cfg, args.stage)
    state = read_weights(weights)
    if args.images:
        classes = dataset_classes(cfg.data.dataset, cfg.data.classes)
        data = ImageFolder(Path(args.images), cfg.data.resize)
        data.check(distributed.shard(list(range(len(data))), ctx))
        ids, palette = data.ids, dataset_palette(len(classes), cfg.data.palette)
    else:
        data = data_utils.source(cfg, cfg.data.eval_split)
        scan_source(data, None, ctx, workers=cfg.data.workers)
        classes, ids, palette = data.classes, data.ids, data.palette
    return build_model(cfg, state, len(classes), weights, ctx), weights, stage, data, ids, palette


def main() -> None:
    args = parse_args()
    cfg = load_config_or_exit(args)
    if args.images and not args.save_predictions:
        fail("--images needs --save-predictions DIR (where the predictions are written)")
    if args.save_predictions:  # found now, not after the whole evaluation
        out, parent = Path(args.save_predictions), Path(args.save_predictions)
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            fail(f"--save-predictions {out}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK):
            fail(f"--save-predictions {out}: {parent} is not writable")
    ctx = distributed.setup(cfg.runtime.device, cfg.runtime.dist_timeout_minutes)
    try:
        amp, _ = resolve_amp(cfg.runtime.amp, ctx.device)
        configure_backends(ctx.device, cfg.deterministic)  # the kernels the run evaluated with
        model, weights, stage, data, ids, palette = prepare(args, cfg, ctx)
    except (ValueError, OSError) as err:
        fail(str(err))
    what = f"stage {stage!r} ({weights})" if stage else str(weights)
    with exit_on_input_error():
        if args.images:
            if ctx.is_main:
                print(f"predicting {len(data)} images of {args.images} with {what}")
            save_predictions(model, data, ids, len(palette), palette, Path(args.save_predictions), cfg, ctx,
                             amp)  # len(palette): one colour per class
        else:
            evaluate_split(model, data, cfg, ctx, amp, args, weights, stage, what)
    distributed.barrier(ctx)
    if ctx.is_main and args.save_predictions:
        print(f"predictions: {args.save_predictions}")
    distributed.cleanup()


def evaluate_split(model, src, cfg, ctx, amp, args, weights: Path, stage, what: str) -> None:
    """mIoU of the eval split: table on stdout and eval_<split>.json (rank 0); predictions if asked."""
    write = prediction_writer(src.ids, src.palette, Path(args.save_predictions)) if args.save_predictions else None
    metrics = evaluate(model, src, cfg, ctx, amp=amp, desc="eval", on_prediction=write)  # one pass for both
    if not ctx.is_main:
        return
    out = output_folder(weights, stage is not None) / f"eval_{split_label(cfg.data.eval_split)}.json"
    atomic_write_json(out, {"config": cfg.name, "stage": stage, "weights": str(weights),
                            "split": cfg.data.eval_split, "eval": cfg.eval.to_dict(), "amp": amp, **metrics})
    print(f"{what} on {cfg.data.eval_split!r} ({metrics['num_images']} images, {cfg.eval.mode}"
          f"{', flip' if cfg.eval.flip else ''}):")
    print(iou_table(metrics))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
