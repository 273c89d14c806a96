"""`entropy` (the paper's): Shannon entropy of the softmax, -sum_c p_c log p_c, in nats (0..log C)."""
from __future__ import annotations

import torch

from .base import PREDICTION, Strategy, check_probs, log_classes


def pixel_entropy(prob: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (natural log) over the class axis: (N, C, H, W) probabilities -> (N, H, W).

    ``xlogy`` defines 0 * log 0 = 0, so saturated softmax outputs give 0 instead of NaN.
    """
    check_probs(prob, 4, "pixel_entropy")
    return -torch.special.xlogy(prob, prob).sum(dim=1)


STRATEGY = Strategy(name="entropy", needs=PREDICTION, map_title="per-pixel entropy of the prediction",
                    bar_label="entropy (nats; max log C)", max_score=log_classes, pixel_fn=pixel_entropy)
