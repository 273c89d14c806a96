"""`margin`: one minus the gap between the two most probable classes, 1 - (p1 - p2) (0..1): a
pixel the model hesitates between two classes over scores high, whatever the other classes hold."""
from __future__ import annotations

import torch

from .base import PREDICTION, Strategy, check_probs, one


def pixel_margin(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) probabilities -> (N, H, W) 1 - (best - second best); needs C >= 2."""
    check_probs(prob, 4, "pixel_margin")
    if prob.shape[1] < 2:
        raise ValueError(f"pixel_margin: needs at least 2 classes, got {prob.shape[1]}")
    top2 = prob.topk(2, dim=1).values  # the two values only: their order among ties does not matter
    return 1.0 - (top2[:, 0] - top2[:, 1])


STRATEGY = Strategy(name="margin", needs=PREDICTION, map_title="per-pixel 1 - (p1 - p2) of the prediction",
                    bar_label="margin score 1 - (p1 - p2) (max 1)", max_score=one, pixel_fn=pixel_margin)
