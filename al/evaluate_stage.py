"""evaluate.py's work: which weights it evaluates (a finished stage of the config's run, or a file
given by path), the config's model loaded with them and the data it predicts (the eval split, or
a folder of unlabeled images), all checked before predicting; then the mIoU report, written as
`eval_<split>.json` into the evaluated stage's folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from al.rundir import RunDirectory
from core import distributed
from core.checkpoint import read_state_dict
from core.errors import MissingInput
from core.io import atomic_write_json
from datasets import dataset_classes, dataset_palette
from datasets.camvid import is_list_file
from engine import data as data_utils
from engine.evaluation import evaluate
from engine.predict import ImageFolder, prediction_writer
from engine.scan import scan_source
from models.build import WeightsMismatch, inference_model


@dataclass
class Evaluated:
    """A model ready to predict, what it was loaded from, and the images it predicts."""
    model: object
    weights: Path
    stage: str | None  # the run's stage the weights are, or None for a file given by path
    data: object       # the eval split's source, or an ImageFolder
    ids: list
    palette: list      # one colour per class

    @property
    def what(self) -> str:
        return f"stage {self.stage!r} ({self.weights})" if self.stage else str(self.weights)


# --------------------------------------------------------------------------- which weights
def stage_weights(cfg, stage: str | None) -> tuple[Path, str]:
    """(weights.pth, stage name) of a finished stage of the config's run directory."""
    run = Path(cfg.output_dir)
    if not (run / "config.yaml").is_file():
        raise MissingInput(f"no run of config {cfg.name!r} at {run} (train it first, or pass --weights)")
    folders = {name: run / RunDirectory.stage_folder(i, name) for i, name in enumerate(cfg.stages)}
    if stage is None:
        finished = [name for name, folder in folders.items() if RunDirectory.stage_done(folder)]
        if not finished:
            raise MissingInput(f"run {run} has no finished stage yet")
        stage = finished[-1]
    by_folder = {folder.name: name for name, folder in folders.items()}
    name = by_folder.get(stage, stage)
    if name not in folders:
        raise ValueError(f"--stage {stage!r}: the stages of {cfg.name} are {list(folders)}")
    if not RunDirectory.stage_done(folders[name]):
        raise MissingInput(f"--stage {name}: stage not finished (no metrics.json in {folders[name]})")
    return folders[name] / "weights.pth", name


def chosen_weights(cfg, weights: str | None, stage: str | None) -> tuple[Path, str | None]:
    """(file, stage name or None): the `--weights` file, else the `--stage` (default: the last
    finished one) of the config's run."""
    if weights is None:
        return stage_weights(cfg, stage)
    path = Path(weights)
    if not path.is_file():
        raise MissingInput(f"--weights: file not found: {path}")
    return path, None


def report_folder(weights: Path, from_stage: bool) -> Path:
    """Where eval_<split>.json goes: the stage folder the weights belong to, else the cwd."""
    if from_stage or (weights.parent.parent / "config.yaml").is_file():
        return weights.parent
    return Path.cwd()


# --------------------------------------------------------------------------- model and data
def prepare(cfg, ctx, *, weights: str | None, stage: str | None, images: str | None) -> Evaluated:
    """Everything checked before predicting (bad input fails here, as ValueError or OSError):
    weights, data (each image decoded once), model."""
    path, stage = chosen_weights(cfg, weights, stage)
    state = read_state_dict(path, checksum="if_present")
    if images:
        classes = dataset_classes(cfg.data.dataset, cfg.data.classes)
        data = ImageFolder(Path(images), cfg.data.resize)
        data.check(distributed.shard(list(range(len(data))), ctx))
        ids, palette = data.ids, dataset_palette(len(classes), cfg.data.palette)
    else:
        data = data_utils.source(cfg, cfg.data.eval_split)
        scan_source(data, None, ctx, workers=cfg.data.workers)
        classes, ids, palette = data.classes, data.ids, data.palette
    try:
        model = inference_model(cfg.model, len(classes), state, ctx.device, channels_last=cfg.runtime.channels_last)
    except WeightsMismatch as err:
        raise ValueError(f"{path} does not fit the model of {cfg.name} (DeepLabv3+ {cfg.model.backbone}, "
                         f"{len(classes)} classes): {_one_line(err)}") from None
    return Evaluated(model, path, stage, data, ids, palette)


def _one_line(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------- report
def evaluate_split(job: Evaluated, cfg, ctx, amp: str, predictions: Path | None) -> tuple[dict, Path] | None:
    """mIoU of the eval split (predictions written by every rank for its shard when a folder is
    given: one pass for both); on rank 0, `eval_<split>.json` written and (metrics, its path)
    returned, None elsewhere."""
    write = prediction_writer(job.ids, job.palette, predictions) if predictions else None
    metrics = evaluate(job.model, job.data, cfg, ctx, amp=amp, desc="eval", on_prediction=write)
    if not ctx.is_main:
        return None
    out = report_folder(job.weights, job.stage is not None) / f"eval_{split_label(cfg.data.eval_split)}.json"
    atomic_write_json(out, {"config": cfg.name, "stage": job.stage, "weights": str(job.weights),
                            "split": cfg.data.eval_split, "eval": cfg.eval.to_dict(), "amp": amp, **metrics})
    return metrics, out


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


def report(job: Evaluated, cfg, metrics: dict, out: Path) -> str:
    """What evaluate.py prints for an evaluated split: a heading, the IoU table, the file written."""
    return (f"{job.what} on {cfg.data.eval_split!r} ({metrics['num_images']} images, {cfg.eval.mode}"
            f"{', flip' if cfg.eval.flip else ''}):\n{iou_table(metrics)}\nwrote {out}")
