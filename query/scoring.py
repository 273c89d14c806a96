"""Region scores (the mean of a strategy's per-pixel scores, query/strategies/) and region
selection: the top `budget` eligible cells of every image, or of the whole pool.

Selection is deterministic by construction: scores are converted to numpy float64 and ordered with
``np.lexsort`` on (eligible first, higher score first, lower flat cell index first). ``torch.topk``
is not used because its order among equal scores is unspecified and may differ between CPU and GPU.
Converting float32 scores to float64 is exact, so it never merges or splits ties by itself; it only
keeps the sort in one well-defined precision whatever dtype the caller hands in. It does *not* make
scores computed on different devices equal: for every rank to pick the same regions, the selection
must run on the same (gathered) score array, which is how train_al.py uses it.
"""
from __future__ import annotations

import numpy as np
import torch

from query.pool import RegionGrid


def region_scores(pixel_scores: torch.Tensor, grid: RegionGrid) -> torch.Tensor:
    """Mean per-pixel score per cell: (N, H, W) -> (N, gh, gw), on the input's device and dtype.

    Every pixel of a cell counts alike (void or not: a query does not know the labels). Sum pooling
    over zero-padded whole cells, then division by each cell's true pixel count, so the smaller edge
    cells are averaged over their own pixels only (plain ``avg_pool2d`` with padding would divide
    them by the full region area).
    """
    if not isinstance(pixel_scores, torch.Tensor):
        raise TypeError(f"region_scores: expected a torch.Tensor, got {type(pixel_scores).__name__}")
    if pixel_scores.dim() != 3:
        raise ValueError(f"region_scores: expected (N, H, W) pixel scores, got shape "
                         f"{tuple(pixel_scores.shape)}")
    if not pixel_scores.is_floating_point():
        raise ValueError(f"region_scores: pixel scores must be floating point, got {pixel_scores.dtype}")
    sums = grid.cell_sums(pixel_scores)
    areas = torch.as_tensor(grid.cell_areas.copy(), device=pixel_scores.device, dtype=pixel_scores.dtype)
    return sums / areas


def eligible_cells(pool_cells, scored_images=None) -> np.ndarray:
    """Cells that may be queried: not labeled yet (in an image the model scored, when
    ``scored_images`` (N,) bool is given).

    Deliberately nothing else: a real query step knows the model's predictions and which cells
    are already labeled, never the labels of unlabeled images (so void-heavy cells are not
    filtered out; revealing one still costs its full area, as in the paper's accounting).
    """
    pool_cells = _to_numpy(pool_cells)
    if pool_cells.dtype != bool or pool_cells.ndim != 3:
        raise ValueError(f"eligible_cells: pool_cells must be bool (N, gh, gw), got dtype "
                         f"{pool_cells.dtype} shape {pool_cells.shape}")
    eligible = ~pool_cells
    if scored_images is not None:
        scored_images = _to_numpy(scored_images)
        if scored_images.dtype != bool or scored_images.shape != pool_cells.shape[:1]:
            raise ValueError(f"eligible_cells: scored_images must be bool ({pool_cells.shape[0]},), "
                             f"got dtype {scored_images.dtype} shape {scored_images.shape}")
        eligible &= scored_images[:, None, None]
    return eligible


SELECTION_MODES = ("per_image", "global")


def select(scores, eligible, mode: str, budget: int) -> np.ndarray:
    """The ``budget`` highest-scoring eligible cells of every image (``mode="per_image"``; fewer
    where fewer are eligible) or of the whole pool (``mode="global"``). Ties go to the lowest flat
    cell index: row-major within an image, image-major over the pool.

    Every strategy goes through here, random included (its scores are minus uniform keys, see
    query/strategies/random_regions.py).
    """
    scores, eligible = _check_scores(scores, eligible, "select")
    if mode not in SELECTION_MODES:
        raise ValueError(f"select: mode must be one of {list(SELECTION_MODES)}, got {mode!r}")
    _check_count(budget, "budget", "select")
    rows = scores.shape[0] if mode == "per_image" else 1
    flat_scores = scores.reshape(rows, -1)
    flat_eligible = eligible.reshape(rows, -1)
    flat_index = np.broadcast_to(np.arange(flat_scores.shape[1]), flat_scores.shape)
    # lexsort: the last key is the primary one. Ineligible cells sort after every eligible one.
    order = np.lexsort((flat_index, -flat_scores, ~flat_eligible), axis=-1)
    return _take_first(order, flat_eligible, budget).reshape(scores.shape)


def _take_first(order: np.ndarray, flat_eligible: np.ndarray, count: int) -> np.ndarray:
    """Mark the first ``count`` cells of each row of ``order`` that are eligible.

    Eligible cells come first in ``order``, so the first ``count`` positions hold them all; any
    ineligible cell among those positions (a row with fewer eligible cells) is left unmarked.
    """
    chosen = order[:, :count]
    selected = np.zeros(flat_eligible.shape, dtype=bool)
    rows = np.arange(order.shape[0])[:, None]
    selected[rows, chosen] = np.take_along_axis(flat_eligible, chosen, axis=1)
    return selected


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _check_scores(scores, eligible, who: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().to(torch.float64).numpy()
    scores = np.asarray(scores, dtype=np.float64)
    eligible = _to_numpy(eligible)
    if scores.ndim != 3:
        raise ValueError(f"{who}: scores must be (N, gh, gw), got shape {scores.shape}")
    if eligible.dtype != bool or eligible.shape != scores.shape:
        raise ValueError(f"{who}: eligible must be a bool array of shape {scores.shape}, got "
                         f"dtype {eligible.dtype} shape {eligible.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"{who}: scores contain NaN, which has no place in a ranking")
    return scores, eligible


def _check_count(value, name: str, who: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{who}: {name} must be a non-negative integer, got {value!r}")
