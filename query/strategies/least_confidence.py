"""`least_confidence`: one minus the top class probability, 1 - max_c p_c (0..1 - 1/C)."""
from __future__ import annotations

import torch

from .base import PREDICTION, Strategy, check_probs


def pixel_least_confidence(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) probabilities -> (N, H, W) 1 - max_c p_c."""
    check_probs(prob, 4, "pixel_least_confidence")
    return 1.0 - prob.amax(dim=1)


class LeastConfidence(Strategy):
    name = "least_confidence"
    needs = PREDICTION
    map_title = "per-pixel 1 - max p of the prediction"
    bar_label = "least confidence 1 - max p (max 1)"

    def score_max(self, num_classes: int) -> float:
        return 1.0  # the true top is 1 - 1/C; 1 keeps one scale for every class count

    def pixel_scores(self, probs: torch.Tensor) -> torch.Tensor:
        return pixel_least_confidence(probs)
