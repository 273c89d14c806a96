"""DeepLabv3+ with an optional ReCo representation head, and `build_model`."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import build_backbone
from .heads import ASPP, ASPP_RATES, DECODER_CHANNELS, FUSED_CHANNELS, Decoder, RepresentationHead, init_head_weights
from .pretrained import init_backbone


class SegmentationOutput(NamedTuple):
    """What a training forward pass returns when the representation is asked for."""
    logits: torch.Tensor         # (N, C, H, W) at the input size: for the cross-entropy
    rep: torch.Tensor            # (N, rep_dim, h, w) at stride 4: for ReCo
    coarse_logits: torch.Tensor  # (N, C, h, w) at stride 4, before upsampling: ReCo's hard-pixel test


class DeepLabV3Plus(nn.Module):
    """backbone -> ASPP -> decoder -> [dropout] -> 1x1 classifier; the representation head reads
    the decoder's 304-ch fused map. Takes any input size (no divisibility requirement)."""

    def __init__(self, backbone: nn.Module, num_classes: int, output_stride: int,
                 rep_dim: int = 256, rep_head: bool = True, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, ASPP_RATES[output_stride])
        self.decoder = Decoder(backbone.low_level_channels)
        # Dropout is always present (identity at 0) so teacher and student share a state dict.
        # Element-wise dropout on the per-pixel features = the classifier-input dropout of an
        # image classifier, applied at every pixel.
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(DECODER_CHANNELS, num_classes, 1))
        self.representation_head = RepresentationHead(FUSED_CHANNELS, rep_dim) if rep_head else None
        init_head_weights(self.aspp)
        init_head_weights(self.decoder)
        init_head_weights(self.classifier)
        if self.representation_head is not None:
            init_head_weights(self.representation_head)

    def forward(self, x: torch.Tensor, return_rep: bool = False):
        """Logits (N, C, H, W) at input size; with return_rep a `SegmentationOutput` that also holds
        rep and the classifier's logits before upsampling, both at stride 4. ReCo picks its hard
        queries from the softmax of those coarse logits, as the original ReCo code does
        (resizing the full-resolution logits back down would blur which pixels count as hard)."""
        if return_rep and self.representation_head is None:
            raise ValueError("return_rep=True needs a model built with rep_head=True")
        low_level, high_level = self.backbone(x)
        decoded, fused = self.decoder(low_level, self.aspp(high_level))
        coarse = self.classifier(decoded)
        logits = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if return_rep:
            return SegmentationOutput(logits, self.representation_head(fused), coarse)
        return logits


def build_model(backbone: str = "mobilenet_v2", num_classes: int = 11, output_stride: int = 16,
                pretrained: str = "none", rep_dim: int = 256, rep_head: bool = True,
                dropout: float = 0.0, stochastic_depth: float = 0.0) -> DeepLabV3Plus:
    """DeepLabv3+ on `backbone` ('mobilenet_v2' | 'resnet50' | 'resnet101_deepstem').

    pretrained: 'none', 'imagenet' (torchvision weights API; not for the deep stem) or a local
    .pth path (a state dict, or one under 'state_dict' / 'model'). Student noise: `dropout`
    before the classifier, `stochastic_depth` (ResNets) on residual blocks; both off in eval().
    """
    if num_classes < 1 or rep_dim < 1:
        raise ValueError(f"num_classes and rep_dim must be positive, got {num_classes}, {rep_dim}")
    encoder = build_backbone(backbone, output_stride, stochastic_depth)
    init_backbone(encoder, backbone, pretrained)
    return DeepLabV3Plus(encoder, num_classes, output_stride, rep_dim=rep_dim, rep_head=rep_head, dropout=dropout)
