"""mIoU evaluation: a confusion matrix accumulated on every rank's shard, summed over ranks."""
from __future__ import annotations

import numpy as np
import torch

from core import distributed as dist_utils
from engine.data import eval_transform, ordered_loader
from engine.inference import config_settings, predict_loader

from core.labels import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; ignore pixels skipped."""
    valid = label != IGNORE_INDEX
    index = label[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN for a class absent from both ground truth and prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou_from_confusion(conf: np.ndarray) -> float:
    iou = iou_from_confusion(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0


@torch.inference_mode()
def mean_class_accuracy(conf: np.ndarray) -> float:
    """Mean over the classes present in the labels (rows of the confusion matrix) of the share of
    their pixels predicted right (0.0 when no class is present)."""
    total = conf.sum(axis=1)
    present = total > 0
    return float((np.diag(conf)[present] / total[present]).mean()) if present.any() else 0.0


def evaluate(model, src, cfg, ctx, *, amp: str, desc: str = "eval", on_prediction=None) -> dict:
    """mIoU and per-class IoU (percent) of `model` on every image of `src`, predicted as
    eval.* says (mode, window, scales, flip), eval.batch_size images per batch.
    `on_prediction(samples, probs)`, if given, sees every group this rank predicts (e.g. to
    save the predictions without predicting twice)."""
    from datasets import full_view

    model.eval()
    view = full_view(src, eval_transform())
    indices = dist_utils.shard(list(range(len(view))), ctx)
    loader = ordered_loader(view, indices, cfg.eval.batch_size, ctx, workers=cfg.data.workers)
    settings = config_settings(cfg, scales=cfg.eval.scales, flip=cfg.eval.flip, amp=amp)
    conf = torch.zeros(src.num_classes, src.num_classes, dtype=torch.int64, device=ctx.device)
    for group, probs in predict_loader(model, loader, ctx.device, src.num_classes, settings,
                                       desc=desc, show=ctx.is_main):
        labels = group["label"].to(ctx.device, non_blocking=True)
        conf += confusion_matrix(probs.argmax(1), labels, src.num_classes)
        if on_prediction is not None:
            on_prediction(group, probs)
    dist_utils.all_reduce_sum(conf, ctx)
    conf = conf.cpu().numpy()
    iou = iou_from_confusion(conf)
    return {
        "miou": 100.0 * miou_from_confusion(conf),
        "per_class_iou": {name: (None if np.isnan(v) else 100.0 * float(v)) for name, v in zip(src.classes, iou)},
        "pixel_acc": 100.0 * float(np.trace(conf) / max(conf.sum(), 1)),
        "macc": 100.0 * mean_class_accuracy(conf),
        "num_images": len(src),
    }
