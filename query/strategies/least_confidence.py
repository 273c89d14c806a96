"""`least_confidence`: one minus the top class probability, 1 - max_c p_c (0..1 - 1/C)."""
from __future__ import annotations

import torch

from .base import PREDICTION, Strategy, check_probs


def pixel_least_confidence(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) probabilities -> (N, H, W) 1 - max_c p_c."""
    check_probs(prob, 4, "pixel_least_confidence")
    return 1.0 - prob.amax(dim=1)


def uniform_least_confidence(num_classes: int) -> float:
    """The top of the score, reached by the uniform prediction (max p = 1/C)."""
    return 1.0 - 1.0 / num_classes


STRATEGY = Strategy(name="least_confidence", needs=PREDICTION, map_title="per-pixel 1 - max p of the prediction",
                    bar_label="least confidence 1 - max p (max 1 - 1/C)", max_score=uniform_least_confidence,
                    pixel_fn=pixel_least_confidence)
