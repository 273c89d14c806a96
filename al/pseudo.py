"""One inference pass of the current model over the unlabeled pool, yielding both
  - pseudo labels: argmax where max softmax >= threshold, else 255, written as palette PNGs (the
    values are the class ids; viewers show the data set's colours, 255 black); and
  - region scores: mean per-pixel entropy per grid cell (for the next query).
Each rank handles its shard of images; scores are gathered so every rank holds all of them.
It lives in the engine (it needs the engine's loaders, inference and writers); `query/` keeps
only the selection logic it calls (`query.scoring`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datasets import full_view
from core import distributed as dist_utils
from core import faults
from engine.data import eval_transform, ordered_loader
from engine.inference import config_settings, predict_loader
from core.io import atomic_write_index_png, flat_name
from query.scoring import pixel_entropy, region_scores

from core.labels import IGNORE_INDEX


def pseudo_label_file(folder: Path, image_id: str) -> Path:
    return Path(folder) / (flat_name(image_id) + ".png")


def pseudo_labels(prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, C, H, W) probabilities -> (N, H, W) uint8 labels, 255 where confidence < threshold."""
    conf, pred = prob.max(dim=1)
    return torch.where(conf >= threshold, pred, torch.full_like(pred, IGNORE_INDEX)).to(torch.uint8)


@torch.inference_mode()
def pseudo_label_pass(model, src, indices: list[int], cfg, ctx, *, amp: str, out_dir: Path,
                      grid=None, keep_entropy_for=(), prediction_dir: Path | None = None) -> dict:
    """Predict `indices` of `src` (pseudo.scales / pseudo.flip, the eval window settings,
    pseudo.batch_size images per batch); write `out_dir/<id>.png`; return gathered results.
    With `prediction_dir`, also the plain argmax of every image there (no confidence threshold:
    what a human annotator is offered as a pre-annotation).

    Returns {"scores": {index: (gh, gw) float32 array} (only with a grid),
             "entropy": {index: (H, W) float16 array} for indices in keep_entropy_for}.
    """
    model.eval()
    view = full_view(src, eval_transform())
    mine = dist_utils.shard(list(indices), ctx)
    loader = ordered_loader(view, mine, cfg.pseudo.batch_size, ctx, workers=cfg.data.workers)
    settings = config_settings(cfg, scales=cfg.pseudo.scales, flip=cfg.pseudo.flip, amp=amp)
    scores, entropies = {}, {}
    keep = set(keep_entropy_for)
    for group, prob in predict_loader(model, loader, ctx.device, src.num_classes, settings,
                                      desc="pseudo-label", show=ctx.is_main):
        labels = pseudo_labels(prob, cfg.pseudo.threshold).cpu().numpy()
        argmax = prob.argmax(dim=1).to(torch.uint8).cpu().numpy() if prediction_dir is not None else None
        entropy = pixel_entropy(prob) if (grid is not None or keep) else None
        cell_scores = region_scores(entropy, grid).cpu().numpy() if grid is not None else None
        for j, index in enumerate(group["index"].tolist()):
            atomic_write_index_png(pseudo_label_file(out_dir, src.ids[index]), labels[j], src.palette)
            if prediction_dir is not None:
                atomic_write_index_png(pseudo_label_file(prediction_dir, src.ids[index]), argmax[j], src.palette)
            faults.reached("pseudo_png")
            if cell_scores is not None:
                scores[index] = cell_scores[j].astype(np.float32)
            if index in keep:
                entropies[index] = entropy[j].cpu().numpy().astype(np.float16)
    merged_scores, merged_entropy = {}, {}
    for part_scores, part_entropy in dist_utils.all_gather_objects((scores, entropies), ctx):
        merged_scores.update(part_scores)
        merged_entropy.update(part_entropy)
    return {"scores": merged_scores, "entropy": merged_entropy}
