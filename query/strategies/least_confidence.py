"""`least_confidence`: one minus the top class probability, 1 - max_c p_c (0..1 - 1/C)."""
from __future__ import annotations

import torch

from .base import PREDICTION, Strategy, check_probs, one


def pixel_least_confidence(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) probabilities -> (N, H, W) 1 - max_c p_c."""
    check_probs(prob, 4, "pixel_least_confidence")
    return 1.0 - prob.amax(dim=1)


# The true top is 1 - 1/C; 1 keeps one colour scale for every class count.
STRATEGY = Strategy(name="least_confidence", needs=PREDICTION, map_title="per-pixel 1 - max p of the prediction",
                    bar_label="least confidence 1 - max p (max 1)", max_score=one, pixel_fn=pixel_least_confidence)
