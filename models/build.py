"""Build the config's DeepLabv3+ and load weights into it: for a training stage, for the
pseudo-label / query pass and for evaluate.py alike."""
from __future__ import annotations

from pathlib import Path

import torch

from core import checkpoint as ckpt
from core.schema import BACKBONE_NOISE
from .deeplab import build_model

REP_HEAD = "representation_head."  # parameters that exist only in models trained with ReCo


def make_model(model_cfg, num_classes: int, *, rep_head: bool, noise: bool, pretrained: str | None = None):
    """DeepLabv3+ as `model_cfg` (the config's `model` section) says. Noisy students get the
    paper's noise: dropout before the classifier for MobileNetV2 and EfficientNet-Lite0,
    stochastic depth on the residual blocks for the ResNets. `pretrained` overrides
    `model_cfg.pretrained` (e.g. "none" when the weights come from a checkpoint anyway)."""
    m = model_cfg
    noise_key = BACKBONE_NOISE[m.backbone] if noise else None
    return build_model(backbone=m.backbone, num_classes=num_classes, output_stride=m.output_stride,
                       pretrained=m.pretrained if pretrained is None else pretrained,
                       rep_dim=m.rep_dim, rep_head=rep_head,
                       dropout=m.dropout if noise_key == "dropout" else 0.0,
                       stochastic_depth=m.stochastic_depth if noise_key == "stochastic_depth" else 0.0)


class WeightsMismatch(RuntimeError):
    """A state dict whose keys or shapes differ from the model's (torch's message lists them)."""


def transfer_weights(model, state: dict) -> None:
    """Load a previous stage's weights. Every key must match, except the representation head,
    which exists only when ReCo is on: a student with the head and a teacher without keeps its
    fresh head (and the reverse drops the teacher's). Anything else is WeightsMismatch."""
    own = model.state_dict()
    is_rep = lambda k: k.startswith(REP_HEAD)  # noqa: E731
    merged = {k: v for k, v in state.items() if not is_rep(k) or k in own}
    for k in own:
        if is_rep(k) and k not in merged:
            merged[k] = own[k]
    try:
        model.load_state_dict(merged)  # strict: any other difference raises
    except RuntimeError as err:  # told apart from other RuntimeErrors (a device out of memory, ...)
        raise WeightsMismatch(str(err)) from err


def load_weights(path: Path) -> dict:
    """A finished stage's weights.pth (checksummed, written by this code)."""
    return ckpt.read_state_dict(path, checksum="required")


def inference_model(model_cfg, num_classes: int, state: dict, device: torch.device, *, channels_last: bool,
                    noise: bool = False):
    """The model that predicts only (no representation head), strictly loaded from `state`, in
    eval mode on `device`; channels_last as in training, so its numbers equal the run's own.
    `noise`: with the student's noise modules (off in eval mode; BALD switches them on)."""
    model = make_model(model_cfg, num_classes, rep_head=False, noise=noise, pretrained="none")
    transfer_weights(model, state)  # strict: a mismatch raises WeightsMismatch naming the keys
    model.to(device).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model
