"""Entropy region scores and region selection (top-k per image, top-n global, random baseline).

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


def pixel_entropy(prob: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (natural log) over the class axis: (N, C, H, W) probabilities -> (N, H, W).

    ``xlogy`` defines 0 * log 0 = 0, so saturated softmax outputs give 0 instead of NaN.
    """
    if not isinstance(prob, torch.Tensor):
        raise TypeError(f"pixel_entropy: expected a torch.Tensor, got {type(prob).__name__}")
    if prob.dim() != 4:
        raise ValueError(f"pixel_entropy: expected (N, C, H, W) probabilities, got shape "
                         f"{tuple(prob.shape)}")
    if not prob.is_floating_point():
        raise ValueError(f"pixel_entropy: probabilities must be floating point, got {prob.dtype}")
    return -torch.special.xlogy(prob, prob).sum(dim=1)


def region_scores(entropy: torch.Tensor, grid: RegionGrid) -> torch.Tensor:
    """Mean entropy per cell: (N, H, W) -> (N, gh, gw), on the input's device and dtype.

    Sum pooling over zero-padded whole cells, then division by each cell's true pixel count, so
    the smaller edge cells are averaged over their own pixels only (plain ``avg_pool2d`` with
    padding would divide them by the full region area).
    """
    if not isinstance(entropy, torch.Tensor):
        raise TypeError(f"region_scores: expected a torch.Tensor, got {type(entropy).__name__}")
    if entropy.dim() != 3:
        raise ValueError(f"region_scores: expected (N, H, W) entropy, got shape "
                         f"{tuple(entropy.shape)}")
    if not entropy.is_floating_point():
        raise ValueError(f"region_scores: entropy must be floating point, got {entropy.dtype}")
    sums = grid.cell_sums(entropy)
    areas = torch.as_tensor(grid.cell_areas.copy(), device=entropy.device, dtype=entropy.dtype)
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


def select_topk_per_image(scores, eligible, k: int) -> np.ndarray:
    """The ``k`` highest-scoring eligible cells of every image (fewer where fewer are eligible).

    Ties go to the lowest flat cell index (row-major within the image).
    """
    scores, eligible = _check_scores(scores, eligible, "select_topk_per_image")
    _check_count(k, "k", "select_topk_per_image")
    num_images = scores.shape[0]
    flat_scores = scores.reshape(num_images, -1)
    flat_eligible = eligible.reshape(num_images, -1)
    flat_index = np.broadcast_to(np.arange(flat_scores.shape[1]), flat_scores.shape)
    # lexsort: the last key is the primary one. Ineligible cells sort after every eligible one.
    order = np.lexsort((flat_index, -flat_scores, ~flat_eligible), axis=-1)
    return _take_first(order, flat_eligible, k).reshape(scores.shape)


def select_topk_global(scores, eligible, n: int) -> np.ndarray:
    """The ``n`` highest-scoring eligible cells over the whole pool; ties to the lowest flat index
    (image-major, then row-major)."""
    scores, eligible = _check_scores(scores, eligible, "select_topk_global")
    _check_count(n, "n", "select_topk_global")
    flat_scores = scores.reshape(1, -1)
    flat_eligible = eligible.reshape(1, -1)
    flat_index = np.arange(flat_scores.shape[1])[None]
    order = np.lexsort((flat_index, -flat_scores, ~flat_eligible), axis=-1)
    return _take_first(order, flat_eligible, n).reshape(scores.shape)


def select_random(eligible, k_per_image: int | None = None, n_total: int | None = None,
                  seed: int = 0) -> np.ndarray:
    """Random-region baseline with the same budget as the entropy query.

    Exactly one of ``k_per_image`` (k random eligible cells per image) or ``n_total`` (n random
    eligible cells over the pool). Every cell gets an i.i.d. uniform key from
    ``np.random.default_rng(seed)`` and the lowest keys among eligible cells win, which is a
    uniform random subset and depends only on the seed and the array shape.
    """
    eligible = _to_numpy(eligible)
    if eligible.dtype != bool or eligible.ndim != 3:
        raise ValueError(f"select_random: eligible must be bool (N, gh, gw), got dtype "
                         f"{eligible.dtype} shape {eligible.shape}")
    if (k_per_image is None) == (n_total is None):
        raise ValueError("select_random: give exactly one of k_per_image and n_total")
    keys = np.random.default_rng(seed).random(eligible.shape)
    if k_per_image is not None:
        _check_count(k_per_image, "k_per_image", "select_random")
        flat_keys = keys.reshape(eligible.shape[0], -1)
        flat_eligible = eligible.reshape(eligible.shape[0], -1)
        count = k_per_image
    else:
        _check_count(n_total, "n_total", "select_random")
        flat_keys = keys.reshape(1, -1)
        flat_eligible = eligible.reshape(1, -1)
        count = n_total
    order = np.lexsort((flat_keys, ~flat_eligible), axis=-1)
    return _take_first(order, flat_eligible, count).reshape(eligible.shape)


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
