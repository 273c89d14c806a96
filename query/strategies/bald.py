"""`bald` (Houlsby et al. 2011; Gal et al. 2017): mutual information between the prediction and
the model's weights, estimated from T = query.mc_passes forward passes with the student's noise on
(dropout before the classifier for MobileNetV2 / EfficientNet-Lite0, stochastic depth for the
ResNets; BatchNorm stays in eval mode):

    H(mean_t p_t) - mean_t H(p_t)      (0..log C)

high where the noisy passes disagree with each other, not where each is merely unsure (that part,
the mean entropy, is subtracted). The noisy passes are run by `al.pseudo`; this module only reads them.
"""
from __future__ import annotations

import torch

from .base import MC_SAMPLES, Strategy, check_probs, log_classes
from .entropy import pixel_entropy


def pixel_mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """(T, N, C, H, W) softmax samples -> (N, H, W) H(mean_t p_t) - mean_t H(p_t); needs T >= 2."""
    check_probs(samples, 5, "pixel_mutual_information")
    t, n = samples.shape[:2]
    if t < 2:
        raise ValueError(f"pixel_mutual_information: needs at least 2 samples, got {t}")
    entropy_of_mean = pixel_entropy(samples.mean(dim=0))
    mean_entropy = pixel_entropy(samples.flatten(0, 1)).unflatten(0, (t, n)).mean(dim=0)
    # >= 0 by Jensen's inequality; float rounding can leave -1e-8 where the samples agree.
    return (entropy_of_mean - mean_entropy).clamp_min(0.0)


STRATEGY = Strategy(name="bald", needs=MC_SAMPLES, map_title="per-pixel BALD mutual information (MC noise)",
                    bar_label="mutual information (nats; scale: the largest in this query's pictures)",
                    max_score=log_classes, panel_scale="observed",
                    pixel_fn=pixel_mutual_information)
