"""One inference pass of the current model over the unlabeled pool, yielding both
  - pseudo labels: argmax where max softmax >= threshold, else 255, written as palette PNGs (the
    values are the class ids; viewers show the data set's colours, 255 black), always from the
    plain (noise-free) prediction; and
  - region scores (for the next query): the mean per cell of the query strategy's per-pixel
    scores (query/strategies/: entropy, margin, ... of the plain prediction; bald from
    query.mc_passes extra passes with the student's noise on; random reads no model output).
Each rank handles its shard of images; scores are gathered so every rank holds all of them.
It lives in `al/` (it needs the engine's loaders, inference and writers); `query/` keeps the
scoring and selection logic it calls. The pass is cached in the stage's `pseudo_done.npz`
(`save_pass` / `load_pass`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import StochasticDepth

from datasets import full_view
from datasets.transforms import normalize_images
from core import distributed as dist_utils
from core import faults
from engine.data import eval_transform, ordered_loader
from engine.inference import config_settings, predict_loader, predict_probs
from core.io import atomic_write_index_png, atomic_write_npz, flat_name
from query.scoring import region_scores
from query.strategies import MC_SAMPLES, NOTHING

from core.labels import IGNORE_INDEX


def pseudo_label_file(folder: Path, image_id: str) -> Path:
    return Path(folder) / (flat_name(image_id) + ".png")


def pseudo_labels(prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, C, H, W) probabilities -> (N, H, W) uint8 labels, 255 where confidence < threshold."""
    conf, pred = prob.max(dim=1)
    return torch.where(conf >= threshold, pred, torch.full_like(pred, IGNORE_INDEX)).to(torch.uint8)


@torch.inference_mode()
def pseudo_label_pass(model, src, indices: list[int], cfg, ctx, *, amp: str, out_dir: Path,
                      grid=None, strategy=None, stage_seed: int = 0, keep_maps_for=(),
                      prediction_dir: Path | None = None) -> dict:
    """Predict `indices` of `src` (pseudo.scales / pseudo.flip, the eval window settings,
    pseudo.batch_size images per batch); write `out_dir/<id>.png`; return gathered results.
    With `prediction_dir`, also the plain argmax of every image there (no confidence threshold:
    what a human annotator is offered as a pre-annotation).

    With a `grid` and a `strategy` (query/strategies/) the pass also scores: a strategy that
    reads the prediction scores it; bald runs cfg.query.mc_passes noisy passes per image, seeded
    by `stage_seed` and the image's index (`mc_samples`); random computes nothing here.

    Returns {"scores": {index: (gh, gw) float32 array} (model strategies only),
             "maps": {index: (H, W) float16 per-pixel scores} for indices in keep_maps_for,
             "covered": the indices a query may pick from: all of `indices` when the pass
                        scores for a query (random included), none otherwise}.
    """
    model.eval()
    view = full_view(src, eval_transform())
    mine = dist_utils.shard(list(indices), ctx)
    loader = ordered_loader(view, mine, cfg.pseudo.batch_size, ctx, workers=cfg.data.workers)
    settings = config_settings(cfg, scales=cfg.pseudo.scales, flip=cfg.pseudo.flip, amp=amp)
    scoring = grid is not None and strategy is not None and strategy.needs != NOTHING
    if strategy is not None and strategy.needs == MC_SAMPLES:
        check_noise(model, strategy.name)
    scores, maps = {}, {}
    keep = set(keep_maps_for) if scoring else set()
    for group, prob in predict_loader(model, loader, ctx.device, src.num_classes, settings,
                                      desc="pseudo-label", show=ctx.is_main):
        labels = pseudo_labels(prob, cfg.pseudo.threshold).cpu().numpy()
        argmax = prob.argmax(dim=1).to(torch.uint8).cpu().numpy() if prediction_dir is not None else None
        batch_indices = group["index"].tolist()
        pixel_scores = cell_scores = None
        if scoring:
            if strategy.needs == MC_SAMPLES:
                images = normalize_images(group["image"].to(ctx.device, non_blocking=True))
                prob = mc_samples(model, images, batch_indices, cfg.query.mc_passes, stage_seed,
                                  src.num_classes, settings)
            pixel_scores = strategy.pixel_scores(prob)
            cell_scores = region_scores(pixel_scores, grid).cpu().numpy()
        for j, index in enumerate(batch_indices):
            atomic_write_index_png(pseudo_label_file(out_dir, src.ids[index]), labels[j], src.palette)
            if prediction_dir is not None:
                atomic_write_index_png(pseudo_label_file(prediction_dir, src.ids[index]), argmax[j], src.palette)
            faults.reached("pseudo_png")
            if cell_scores is not None:
                scores[index] = cell_scores[j].astype(np.float32)
            if index in keep:
                maps[index] = pixel_scores[j].cpu().numpy().astype(np.float16)
    merged_scores, merged_maps = {}, {}
    for part_scores, part_maps in dist_utils.all_gather_objects((scores, maps), ctx):
        merged_scores.update(part_scores)
        merged_maps.update(part_maps)
    query_pass = grid is not None and strategy is not None
    return {"scores": merged_scores, "maps": merged_maps, "covered": sorted(indices) if query_pass else []}


# ---------------------------------------------------------------------------- bald's noisy passes
NOISE_MODULES = (torch.nn.modules.dropout._DropoutNd, StochasticDepth)  # models/: the student's noise


def noise_modules(model) -> list[torch.nn.Module]:
    """The dropout / stochastic-depth modules of `model` that drop something (p > 0)."""
    return [m for m in model.modules() if isinstance(m, NOISE_MODULES) and m.p > 0]


def check_noise(model, strategy: str) -> None:
    if not noise_modules(model):
        raise ValueError(f"query.strategy={strategy}: the model has no noise to sample (model.dropout for "
                         f"MobileNetV2 / EfficientNet-Lite0, model.stochastic_depth for ResNets is 0); "
                         f"build it with make_model(..., noise=True) and a nonzero rate")


@contextlib.contextmanager
def noise_on(model):
    """Only the noise modules in train mode (BatchNorm keeps its running statistics: eval mode)."""
    modules = noise_modules(model)
    for m in modules:
        m.train()
    try:
        yield
    finally:
        for m in modules:
            m.eval()


def mc_seed(stage_seed: int, index: int) -> int:
    """The noise seed of image `index` in the stage: the same on every rank and in any world size
    or batch size (each image's passes run alone, under their own seed)."""
    return int(np.random.SeedSequence([int(stage_seed), int(index)]).generate_state(1, np.uint64)[0])


def mc_samples(model, images: torch.Tensor, indices: list[int], passes: int, stage_seed: int,
               num_classes: int, settings: dict) -> torch.Tensor:
    """(T, N, C, H, W) softmax of `passes` noisy predictions of every image (the settings of the
    plain pass: scales, flip, windows). The global RNG is left as it was."""
    devices = [images.device] if images.device.type == "cuda" else []
    per_image = []
    with noise_on(model), torch.random.fork_rng(devices=devices):
        for j, index in enumerate(indices):
            torch.manual_seed(mc_seed(stage_seed, index))
            per_image.append(torch.stack([predict_probs(model, images[j:j + 1], num_classes=num_classes, **settings)[0]
                                          for _ in range(passes)]))
    return torch.stack(per_image, dim=1)


# ---------------------------------------------------------------------------- the pass's file
class StalePass(ValueError):
    """A pass file this code did not write (an older format, or another strategy): recomputed."""


def save_pass(path: Path, out: dict, n: int, grid_shape, strategy: str) -> None:
    """pseudo_done.npz: `scores` (n, gh, gw) float32 region scores of `strategy` (zeros for a
    strategy that reads no model, random: its scores are drawn at selection), `has_scores` (n,)
    the images the query may pick from, `strategy` its name, `map_ids` / `maps` (K, H, W) float16
    per-pixel scores of the images drawn in the query panels, `seconds` the pass's wall time."""
    scores = np.zeros((n,) + tuple(grid_shape), dtype=np.float32)
    has = np.zeros(n, dtype=bool)
    has[out["covered"]] = True
    for i, s in out["scores"].items():
        scores[i] = s
    map_ids = np.array(sorted(out["maps"]), dtype=np.int64)
    maps = np.stack([out["maps"][i] for i in map_ids]) if len(map_ids) else np.zeros((0, 1, 1), np.float16)
    atomic_write_npz(path, scores=scores, has_scores=has, strategy=np.array(strategy), map_ids=map_ids,
                     maps=maps, seconds=out["seconds"])


def load_pass(path: Path, strategy: str) -> dict:
    """What `save_pass` wrote. StalePass for a file of the code before the strategy registry
    (per-pixel entropy under `vis` / `vis_ids`, no strategy name) or of another strategy."""
    with np.load(path, allow_pickle=False) as d:
        if "strategy" not in d.files or "maps" not in d.files:
            raise StalePass(f"{path} was written before the strategy registry (no strategy name)")
        if str(d["strategy"]) != strategy:
            raise StalePass(f"{path} holds {str(d['strategy'])!r} scores, query.strategy is {strategy!r}")
        return {"scores": d["scores"], "has_scores": d["has_scores"], "seconds": float(d["seconds"]),
                "strategy": str(d["strategy"]), "maps": {int(i): m for i, m in zip(d["map_ids"], d["maps"])}}
