"""Can a run get the weights its config asks for? Checked before any training step."""
from __future__ import annotations

import os

from .backbones import build_backbone
from .pretrained import IMAGENET_WEIGHTS, efficientnet_lite0_file, imagenet_cache_path, init_backbone


def pretrained_status(backbone: str, pretrained: str) -> dict:
    """{"available": bool, "message": str} without loading or downloading anything."""
    if pretrained == "none":
        return {"available": True, "message": "random initialisation (pretrained: none)"}
    if pretrained == "imagenet" and backbone == "efficientnet_lite0":
        try:
            return {"available": True, "message": f"ImageNet weights installed at {efficientnet_lite0_file()}"}
        except FileNotFoundError as err:
            return {"available": False, "message": str(err)}
    if pretrained == "imagenet":
        if backbone not in IMAGENET_WEIGHTS:
            return {"available": False, "message": f"no torchvision ImageNet weights for {backbone}; "
                                                    f"set model.pretrained to a local .pth file"}
        weights = IMAGENET_WEIGHTS[backbone]
        path = imagenet_cache_path(weights)
        if os.path.isfile(path):
            return {"available": True, "message": f"ImageNet weights cached at {path}"}
        return {"available": False, "message": f"ImageNet weights not cached: a run downloads {weights.url} "
                                                f"to {path} (offline: put the file there)"}
    if os.path.isfile(pretrained):
        return {"available": True, "message": f"local weights file {pretrained}"}
    return {"available": False, "message": f"model.pretrained: weights file not found: {pretrained}"}


def check_pretrained(backbone: str, output_stride: int, pretrained: str) -> None:
    """Load the weights into a throwaway backbone: a missing file, no network for a download, or
    a file made for another architecture fails here, before the first training step."""
    init_backbone(build_backbone(backbone, output_stride), backbone, pretrained)
