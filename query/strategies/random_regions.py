"""`random`: the baseline every active-learning result is compared with. Every region gets an
i.i.d. uniform key from np.random.default_rng(seed) and its score is -key, so the selection's
top-k (higher score first, lower flat index on ties) takes the lowest keys: a uniform random subset
of the eligible regions, which depends only on the seed and the pool's shape. It reads no model
output (the pass computes no scores for it). -key, not 1 - key: negation is exact in floating
point, so no two keys become one tied score."""
from __future__ import annotations

import numpy as np

from .base import NOTHING, Strategy, one


def random_scores(shape: tuple, seed: int) -> np.ndarray:
    """(N, gh, gw) float64 scores: minus a uniform key per region from default_rng(seed)."""
    return -np.random.default_rng(seed).random(tuple(shape))


class RandomRegions(Strategy):
    """Scores drawn at selection time from the stage's seed and the pool's shape."""

    def selection_scores(self, pass_scores: np.ndarray, seed: int) -> np.ndarray:
        return random_scores(np.shape(pass_scores), seed)

    def panel_map(self, pixel_map, cell_scores: np.ndarray, grid) -> np.ndarray:
        """Each region's 1 - key (= 1 + score, in (0, 1]) over its pixels: which regions the draw favoured."""
        rh, rw = grid.region
        cell_of_row, cell_of_col = np.arange(grid.height) // rh, np.arange(grid.width) // rw
        return 1.0 + np.asarray(cell_scores, dtype=np.float64)[cell_of_row[:, None], cell_of_col[None, :]]


STRATEGY = RandomRegions(name="random", needs=NOTHING,
                         map_title="random draw per region, 1 - key (the lowest keys are taken)",
                         bar_label="random priority 1 - key (max 1)", max_score=one)
