"""Steps both scripts are made of: scan the data, build a stage's model, train it, evaluate it,
record it, and reuse finished stages of another run (`init_from`)."""
from __future__ import annotations

import hashlib
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from engine import checkpoint as ckpt
from engine import distributed as dist_utils
from engine import faults
from engine.config import ConfigError, load_config
from engine.evaluate import evaluate
from engine.inference import predict_probs
from engine.io import atomic_write_json, atomic_write_npz
from engine.figures import prediction_figure
from engine.optim import make_model
from engine.run import RunDirectory, comparable_config, stage_record
from engine.trainer import train_phase

IGNORE = 255
REP_HEAD = "representation_head."  # parameters that exist only in models trained with ReCo


# --------------------------------------------------------------------------- data scan
class _ScanDataset(Dataset):
    """Decodes every image and label once (catching corrupt files, size mismatches and bad label
    values before training) and counts valid pixels per grid cell on the way. A bad file's error
    travels back as text, so the main process can raise it as one clear message (a DataLoader
    worker's exception would arrive wrapped in a worker traceback)."""

    def __init__(self, src, grid):
        self.src, self.grid = src, grid

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        try:
            _, label = self.src.read(i)
        except (ValueError, OSError) as err:
            return i, None, str(err)
        valid = label != IGNORE
        if self.grid is None:
            return i, np.array([[valid.sum()]], dtype=np.int64), None
        if label.shape != (self.grid.height, self.grid.width):
            return i, None, (f"{self.src.label_path(i)}: size {label.shape[0]}x{label.shape[1]} differs from "
                             f"the pool's {self.grid.height}x{self.grid.width} (set data.resize to make them equal)")
        return i, self.grid.cell_sums(valid).astype(np.int64), None


def scan_source(src, grid, ctx, workers: int) -> np.ndarray:
    """(N, gh, gw) valid-pixel counts per cell ((N, 1, 1) without a grid), checking every file.
    Each rank scans its shard; the result is gathered so every rank holds all of it. Reading
    through the source also fills its resized-image cache (data.cache_dir), once, in parallel."""
    mine = dist_utils.shard(list(range(len(src))), ctx)
    loader = DataLoader(torch.utils.data.Subset(_ScanDataset(src, grid), mine), batch_size=None,
                        num_workers=workers)
    found, errors = {}, []
    for i, counts, error in loader:
        if error is not None:
            errors.append(error)
        found[i] = counts
    merged, all_errors = {}, []
    for part, part_errors in dist_utils.all_gather_objects((found, errors), ctx):
        merged.update(part)
        all_errors += part_errors
    if all_errors:
        more = f" (and {len(all_errors) - 1} more bad files)" if len(all_errors) > 1 else ""
        raise ValueError(all_errors[0] + more)
    return np.stack([merged[i] for i in range(len(src))])


def load_scan(cache: Path, src) -> np.ndarray | None:
    """A previous scan of the same images, saved in the run directory, or None."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as data:
            ids, valid = list(data["ids"]), data["valid"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        # A cache of the scan (a pickled or damaged file is never trusted): the scan runs again.
        print(f"warning: {cache} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:120]}); "
              f"checking the images again")
        return None
    if ids != list(src.ids) or valid.ndim != 3 or len(valid) != len(ids) or valid.dtype.kind not in "iu":
        return None
    return valid


def save_scan(cache: Path, src, valid: np.ndarray) -> None:
    atomic_write_npz(cache, ids=np.array(src.ids), valid=valid)


# --------------------------------------------------------------------------- models per stage
def fresh_model(cfg, stage, num_classes: int, teacher_state: dict | None):
    """A new model for a stage, initialised as `stage.init` says."""
    init = stage.init
    model = make_model(cfg, num_classes, rep_head=stage.reco, noise=stage.noise,
                       pretrained="none" if init in ("scratch", "teacher") else None)
    if init == "teacher":
        if teacher_state is None:
            raise ConfigError("stage init=teacher but there is no previous stage to copy from")
        transfer_weights(model, teacher_state)
    return model


def transfer_weights(model, state: dict) -> None:
    """Load a previous stage's weights. Every key must match, except the representation head,
    which exists only when ReCo is on: a student with the head and a teacher without keeps its
    fresh head (and the reverse drops the teacher's). Anything else is an error."""
    own = model.state_dict()
    is_rep = lambda k: k.startswith(REP_HEAD)  # noqa: E731
    merged = {k: v for k, v in state.items() if not is_rep(k) or k in own}
    for k in own:
        if is_rep(k) and k not in merged:
            merged[k] = own[k]
    model.load_state_dict(merged)  # strict: any other difference raises


def load_weights(path: Path) -> dict:
    return ckpt.load_verified(path)["model"]


# --------------------------------------------------------------------------- one trained stage
def train_and_evaluate(*, cfg, ctx, run: RunDirectory, logger, index: int, name: str, stage,
                       model, labeled_view, unlabeled_view, eval_src, amp: str, labeled_pct: float,
                       extra_metrics: dict | None = None, extra_wall_s: float = 0.0) -> dict:
    """Train `model` for the stage, save its weights, evaluate, write metrics.json (= done)."""
    stage_dir = run.stage_dir(index, name)
    logger.log(f"[{name}] {stage.kind}: {stage.epochs} epochs x {stage.iters_per_epoch} it, batch "
               f"{stage.batch_labeled}+{stage.batch_unlabeled}, ReCo {'on' if stage.reco else 'off'}, "
               f"{len(labeled_view)} labeled / {len(unlabeled_view) if unlabeled_view else 0} pseudo-labeled images")

    def eval_fn(m):
        return evaluate(m, eval_src, cfg, ctx, amp=amp, desc=f"{name} eval")

    train_info = train_phase(model, stage=stage, stage_name=name, cfg=cfg, ctx=ctx, amp=amp,
                             labeled_view=labeled_view, unlabeled_view=unlabeled_view,
                             stage_dir=stage_dir, logger=logger, seed=cfg.seed * 100 + index,
                             evaluate_fn=eval_fn)
    faults.perturb_rank(model, ctx.rank)  # test hook (S4AL_PERTURB_RANK); no-op otherwise
    rank_digests = check_ranks_agree(model, ctx, name)
    if ctx.is_main:
        ckpt.save_verified({"model": model.state_dict()}, stage_dir / "weights.pth")
    eval_started = time.time()
    metrics = eval_fn(model)
    log_prediction_panel(model, eval_src, ctx, logger, amp, cfg, tag=f"{name}/prediction", step=index)
    # Training time survives kills (it is kept in the checkpoints); add this evaluation's time.
    wall = train_info["train_time_s"] + (time.time() - eval_started) + extra_wall_s
    record = stage_record(name, stage, metrics, labeled_pct, wall, evals=train_info["evals"])
    record["world_size"] = ctx.world_size  # per stage: a resumed run may use another one for later stages
    logger.scalars({"summary/miou": metrics["miou"], "summary/labeled_pixel_pct": labeled_pct,
                    **{f"iou/{c}": v for c, v in metrics["per_class_iou"].items()}}, index)
    logger.log(f"[{name}] mIoU {metrics['miou']:.2f}  pixel acc {metrics['pixel_acc']:.2f}  mAcc "
               f"{metrics['macc']:.2f}  labeled pixels {labeled_pct:.2f}%")
    if ctx.is_main:
        atomic_write_json(stage_dir / "metrics.json", {
            "record": record, "eval": metrics, "train": train_info, "weights_sha256_per_rank": rank_digests,
            **(extra_metrics or {})})
    dist_utils.barrier(ctx)
    # Step checkpoints are only for resuming this stage; the finished stage keeps weights.pth.
    if ctx.is_main and (stage_dir / "checkpoints").exists():
        shutil.rmtree(stage_dir / "checkpoints")
    return record


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_ranks_agree(model, ctx, stage_name: str) -> list[str]:
    """Every rank must end a stage with bit-identical weights (DDP keeps them in step; a
    difference means a bug, e.g. a buffer updated on one rank only). Returns the digests."""
    digests = dist_utils.all_gather_objects(weights_digest(model), ctx)
    if len(set(digests)) != 1:
        raise RuntimeError(f"stage {stage_name!r}: ranks ended with different weights: {digests}")
    return digests


@torch.no_grad()
def log_prediction_panel(model, src, ctx, logger, amp, cfg, tag: str, step: int, count: int = 3) -> None:
    """TensorBoard panel (engine/figures.py: titled columns, overlay, class legend): image |
    prediction over it | prediction | ground truth for the first `count` eval images.
    Rank 0 alone predicts them again while the other ranks wait at the stage's next barrier, so
    the work is kept small: `count` images, one scale, no flip, windows batched as in evaluation."""
    if not ctx.is_main:
        return
    from datasets import full_view
    from datasets.transforms import image_to_hwc, normalize_images
    from engine.data import eval_transform
    model.eval()
    view = full_view(src, eval_transform())
    rows = []
    for i in range(min(count, len(view))):
        sample = view[i]
        prob = predict_probs(model, normalize_images(sample["image"][None].to(ctx.device)), num_classes=src.num_classes,
                             mode=cfg.eval.mode, window=cfg.eval.window, stride=cfg.eval.stride, amp=amp,
                             channels_last=cfg.runtime.channels_last, window_batch=cfg.eval.window_batch)
        pred = prob.argmax(1)[0].cpu().numpy().astype(np.uint8)
        rows.append((image_to_hwc(sample["image"]), pred, sample["label"].numpy().astype(np.uint8)))
    logger.image(tag, prediction_figure(rows, src.classes, src.palette), step)


# --------------------------------------------------------------------------- init_from
def _without(cfg_dict: dict, keys) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in keys}


# Query settings that only matter once a query stage runs: a run whose shared prefix has no
# query stage may reuse it even if these differ (e.g. the random-query baseline).
_QUERY_ONLY = ("strategy", "selection", "regions_per_image", "budget_pct", "vis_images", "oracle")


def reusable_stages(cfg, overrides=()) -> tuple[Path | None, list[str]]:
    """(run directory of the `init_from` run, names of this config's leading stages it has with
    an identical setup), judged against what that run really was: its saved config.yaml.

    The command line's overrides (except output_dir, init_from, init_from_dir) only help find
    the init_from config's output_dir; whether a stage is the same is decided by the saved file
    alone, so `init_from=X query.oracle=human` never reuses X's ground-truth query stages. A run
    directory without config.yaml (not run yet) shares nothing."""
    if not cfg.init_from:
        return None, []
    source_dir = Path(cfg.init_from_dir) if cfg.init_from_dir else _init_from_output_dir(cfg, overrides)
    saved = source_dir / "config.yaml"
    if not saved.is_file():
        return source_dir, []
    try:
        theirs = yaml.safe_load(saved.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"init_from: {saved}: not a readable config ({err})") from None
    if not isinstance(theirs, dict) or not isinstance(theirs.get("stages"), dict):
        raise ConfigError(f"init_from: {saved}: not a run's saved config (no 'stages' mapping)")
    return source_dir, shared_stages(cfg.to_dict(), theirs, source_dir)


def _init_from_output_dir(cfg, overrides) -> Path:
    shared_overrides = [o for o in overrides
                        if not o.strip().startswith(("output_dir=", "init_from=", "init_from_dir="))]
    try:
        return Path(load_config(cfg.init_from, shared_overrides).output_dir)
    except ConfigError as err:
        raise ConfigError(f"init_from: {err}") from None


_NOT_A_DEPENDENCY = ("stages", "output_dir", "init_from", "init_from_dir", "name")


def shared_stages(ours: dict, theirs: dict, source_dir: Path) -> list[str]:
    """Leading stages of config `ours` that the run of saved config `theirs` (in `source_dir`)
    computed the same way, compared stage by stage:
      - everything outside `stages` that any stage depends on (data, model, seed, losses, ...)
        must be equal, or nothing is shared;
      - each stage's definition, name and position must be equal;
      - a query stage also depends on every query setting, the oracle included, and, with a
        human oracle, on the labels the person gave (the source stage's human_labels/, copied
        along when it is reused): a finished human query stage without them is not reused."""
    def setup(c):
        d = _without(comparable_config(c), _NOT_A_DEPENDENCY)  # execution-only keys may differ
        d["query"] = _without(d.get("query", {}), _QUERY_ONLY)
        return d

    if setup(theirs) != setup(ours):
        return []
    shared = []
    for index, ((a, sa), (b, sb)) in enumerate(zip(ours["stages"].items(), theirs["stages"].items())):
        if a != b or sa != sb:
            break
        if sa.get("kind") == "query":
            if ours["query"] != theirs.get("query"):
                break  # stages before the first query did not use the query settings; this one does
            folder = source_dir / RunDirectory.stage_folder(index, a)
            if (ours["query"].get("oracle") == "human" and RunDirectory.stage_done(folder)
                    and not (folder / "human_labels").is_dir()):
                break
        shared.append(a)
    return shared


def copy_finished_stage(src_dir: Path, dst_dir: Path) -> None:
    """Copy a finished stage folder (weights, pool, metrics — not the pseudo-label PNGs) into place
    atomically: into a temporary sibling first, then renamed."""
    tmp = dst_dir.with_name(dst_dir.name + ".copying")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in src_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    if dst_dir.exists():
        shutil.rmtree(dst_dir)
    tmp.rename(dst_dir)
