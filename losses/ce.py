"""Cross-entropy that stays finite when a batch has no valid pixel."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.labels import IGNORE_INDEX


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE over non-ignored pixels, computed in fp32.

    F.cross_entropy(reduction="mean") divides by the number of valid pixels and returns NaN
    when that is zero — which happens for a pseudo-labeled crop with no confident pixel, or
    one covered by cutout. We divide by max(count, 1) instead: such a batch then contributes a
    graph-connected zero.
    """
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = (target != IGNORE_INDEX).sum().clamp_min(1)
    return loss / valid
