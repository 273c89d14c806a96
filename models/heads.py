"""DeepLabv3+ heads: ASPP, the decoder, and the ReCo representation head."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

ASPP_CHANNELS = 256
LOW_LEVEL_PROJECTION = 48
DECODER_CHANNELS = 256
FUSED_CHANNELS = ASPP_CHANNELS + LOW_LEVEL_PROJECTION  # 304: input of both decoder convs and rep head
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average -> 1x1 conv BN ReLU -> broadcast back.

    Its BatchNorm sees one value per channel and image, so training needs batch size >= 2.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.project = conv_bn_relu(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.project(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """1x1 branch + three atrous 3x3 branches + image pooling, concatenated and projected to
    256 channels (no dropout: the student's noise lives before the classifier / in the backbone)."""

    def __init__(self, in_ch: int, rates: Sequence[int], out_ch: int = ASPP_CHANNELS):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_ch, out_ch, 1)]
            + [conv_bn_relu(in_ch, out_ch, 3, dilation=r) for r in rates]
            + [ImagePooling(in_ch, out_ch)]
        )
        self.project = conv_bn_relu(out_ch * len(self.branches), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class Decoder(nn.Module):
    """Project the stride-4 features to 48 ch, concatenate with the upsampled ASPP output
    (304 ch), then two 3x3 conv BN ReLU at 256 ch. Returns (decoded, fused) so the
    representation head can share the 304-ch fused map."""

    def __init__(self, low_level_ch: int, aspp_ch: int = ASPP_CHANNELS):
        super().__init__()
        self.project_low_level = conv_bn_relu(low_level_ch, LOW_LEVEL_PROJECTION, 1)
        self.refine = nn.Sequential(
            conv_bn_relu(aspp_ch + LOW_LEVEL_PROJECTION, DECODER_CHANNELS, 3),
            conv_bn_relu(DECODER_CHANNELS, DECODER_CHANNELS, 3),
        )

    def forward(self, low_level: torch.Tensor, context: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        context = F.interpolate(context, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        fused = torch.cat([context, self.project_low_level(low_level)], dim=1)
        return self.refine(fused), fused


class RepresentationHead(nn.Module):
    """ReCo's projection: Conv3x3 304->256, BN, ReLU, Conv1x1 256->rep_dim."""

    def __init__(self, in_ch: int = FUSED_CHANNELS, rep_dim: int = 256, hidden: int = 256):
        super().__init__()
        self.body = conv_bn_relu(in_ch, hidden, 3)
        self.out = nn.Conv2d(hidden, rep_dim, 1)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(fused))


def init_head_weights(module: nn.Module) -> None:
    """He init for the randomly initialised heads (the backbone keeps its own init/weights)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
