"""One trained stage of a run: its fresh model, the training (engine/trainer.py), the check that
every rank ends with the same weights, weights.pth, the evaluation and metrics.json (the file
whose presence means the stage is done)."""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from al.rundir import stage_record
from core import checkpoint as ckpt
from core import distributed as dist_utils
from core import faults
from core.config import ConfigError
from core.io import atomic_write_json
from datasets import full_view
from datasets.transforms import image_to_hwc, normalize_images
from engine.data import eval_transform
from engine.evaluation import evaluate
from engine.figures import prediction_figure
from engine.inference import predict_probs
from engine.trainer import Trainer
from models.build import make_model, transfer_weights


def fresh_model(model_cfg, stage, num_classes: int, teacher_state: dict | None):
    """A new model for a stage (`model_cfg`: the config's model section), initialised as
    `stage.init` says."""
    init = stage.init
    model = make_model(model_cfg, num_classes, rep_head=stage.reco, noise=stage.noise,
                       pretrained="none" if init in ("scratch", "teacher") else None)
    if init == "teacher":
        if teacher_state is None:
            raise ConfigError("stage init=teacher but there is no previous stage to copy from")
        transfer_weights(model, teacher_state)
    return model


@dataclass(frozen=True)
class RunContext:
    """What every stage of a run shares: the config, the processes, the log, the evaluation
    images and the autocast mode."""
    cfg: object
    ctx: object
    logger: object
    eval_src: object
    amp: str


@dataclass(frozen=True)
class StageJob:
    """One stage to train: its position, name, config section and folder in the run directory."""
    index: int
    name: str
    stage: object
    folder: Path


def train_and_evaluate(run: RunContext, job: StageJob, model, labeled_view, unlabeled_view, *,
                       labeled_pct: float, extra_metrics: dict | None = None, extra_wall_s: float = 0.0) -> dict:
    """Train `model` for the stage, save its weights, evaluate, write metrics.json (= done).
    `extra_metrics` go into metrics.json beside the record; `extra_wall_s` (the pseudo-label
    pass) is added to the stage's wall time."""
    cfg, ctx, logger, eval_src, amp = run.cfg, run.ctx, run.logger, run.eval_src, run.amp
    index, name, stage, stage_dir = job.index, job.name, job.stage, job.folder
    logger.log(f"[{name}] {stage.kind}: {stage.epochs} epochs x {stage.iters_per_epoch} it, batch "
               f"{stage.batch_labeled}+{stage.batch_unlabeled}, ReCo {'on' if stage.reco else 'off'}, "
               f"{len(labeled_view)} labeled / {len(unlabeled_view) if unlabeled_view else 0} pseudo-labeled images")

    def eval_fn(m):
        return evaluate(m, eval_src, cfg, ctx, amp=amp, desc=f"{name} eval")

    trainer = Trainer(model, stage=stage, stage_name=name, cfg=cfg, ctx=ctx, amp=amp, stage_dir=stage_dir,
                      logger=logger, seed=cfg.seed * 100 + index)
    train_info = trainer.fit(labeled_view, unlabeled_view, evaluate_fn=eval_fn)
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

