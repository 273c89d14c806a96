"""Encoders for DeepLabv3+: torchvision's MobileNetV2 / ResNet-50 / ResNet-101, dilated to an
output stride of 8 or 16, plus the deep-stem variant of ResNet-101 and EfficientNet-Lite0
(`efficientnet_lite.py`).

Every encoder returns `(low_level, high_level)`: stride-4 features for the decoder and
stride-`output_stride` features for ASPP, and exposes `low_level_channels` / `out_channels`.
Parameter names equal torchvision's (minus the ImageNet classifier), so torchvision's ImageNet
checkpoints load without renaming.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
from torchvision.models import mobilenet_v2
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import StochasticDepth

from .efficientnet_lite import EfficientNetLite0Encoder

BACKBONES = ("mobilenet_v2", "resnet50", "resnet101_deepstem", "efficientnet_lite0")
OUTPUT_STRIDES = (8, 16)


class StochasticDepthBottleneck(Bottleneck):
    """torchvision's Bottleneck with stochastic depth on the residual branch (the student's noise).

    With rate 0 (or in eval mode) StochasticDepth is the identity, so this is exactly
    torchvision's block; it adds no parameters, so checkpoints are unchanged.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stochastic_depth = StochasticDepth(0.0, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.stochastic_depth(out) + identity)


class ResNetEncoder(nn.Module):
    """ResNet trunk (no avgpool / fc). layer1 gives the stride-4 low-level features."""

    def __init__(self, resnet: ResNet, stem_channels: int):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.stem_channels = stem_channels
        self.low_level_channels = 256
        self.out_channels = 2048

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low_level = self.layer1(x)
        high_level = self.layer4(self.layer3(self.layer2(low_level)))
        return low_level, high_level


def _set_stochastic_depth(resnet: ResNet, rate: float) -> None:
    """Linear rule of Huang et al. (also used by Noisy Student): block i of n drops with
    probability rate * (i + 1) / n, so the deepest block drops with `rate`."""
    blocks: List[StochasticDepthBottleneck] = [
        b for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4) for b in layer
    ]
    for i, block in enumerate(blocks):
        block.stochastic_depth.p = rate * (i + 1) / len(blocks)


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> List[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def _install_deep_stem(resnet: ResNet) -> None:
    """Replace the 7x7 stem with three 3x3 convs (3->64 stride 2, 64->64, 64->128), each followed
    by BN + ReLU. The last conv's BN/ReLU are `bn1` / `relu`, the layout of the deep-stem
    ResNet-101 checkpoints in common use (conv1.0/1/3/4/6 + bn1), so such files load as they are.
    """
    resnet.conv1 = nn.Sequential(
        *_conv_bn_relu(3, 64, stride=2), *_conv_bn_relu(64, 64, stride=1),
        nn.Conv2d(64, 128, 3, stride=1, padding=1, bias=False),
    )
    resnet.bn1 = nn.BatchNorm2d(128)
    # layer1's first block now receives 128 channels instead of 64.
    first = resnet.layer1[0]
    first.conv1 = nn.Conv2d(128, first.conv1.out_channels, 1, bias=False)
    first.downsample[0] = nn.Conv2d(128, first.downsample[0].out_channels, 1, bias=False)
    for conv in (*[m for m in resnet.conv1 if isinstance(m, nn.Conv2d)], first.conv1, first.downsample[0]):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def build_resnet(depth: int, output_stride: int, deep_stem: bool, stochastic_depth: float) -> ResNetEncoder:
    layers = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    # layer2/3/4 normally halve the resolution; dilate instead of striding past output_stride.
    dilate = [False, True, True] if output_stride == 8 else [False, False, True]
    resnet = ResNet(StochasticDepthBottleneck, layers, replace_stride_with_dilation=dilate)
    if deep_stem:
        _install_deep_stem(resnet)
    _set_stochastic_depth(resnet, stochastic_depth)
    return ResNetEncoder(resnet, stem_channels=128 if deep_stem else 64)


class MobileNetV2Encoder(nn.Module):
    """torchvision MobileNetV2 `features[0:18]` (the final 320->1280 1x1 conv is dropped, as in
    DeepLabv3+: ASPP takes the 320-channel output). features[3] ends at stride 4 (24 ch)."""

    LOW_LEVEL_INDEX = 3

    def __init__(self, output_stride: int):
        super().__init__()
        self.features = mobilenet_v2(weights=None).features[:18]
        _dilate_mobilenet(self.features, output_stride)
        self.low_level_channels = 24
        self.out_channels = 320

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        low_level = None
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.LOW_LEVEL_INDEX:
                low_level = x
        return low_level, x


def _depthwise_conv(block: nn.Module) -> nn.Conv2d:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    if len(convs) != 1:
        raise RuntimeError(f"expected one depthwise conv in {type(block).__name__}, found {len(convs)}")
    return convs[0]


def _dilate_mobilenet(features: nn.Sequential, output_stride: int) -> None:
    """Turn the strided depthwise convs past `output_stride` into dilated ones (VainF / DeepLab
    rule: the block that would have strided keeps the previous dilation, later ones use the
    doubled one). Weight shapes are unchanged, so ImageNet weights still fit."""
    current_stride, dilation = 2, 1  # features[0] is a stride-2 conv
    for block in features[1:]:
        conv = _depthwise_conv(block)
        if conv.stride[0] == 2:
            if current_stride * 2 > output_stride:
                conv.stride = (1, 1)
                conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
                dilation *= 2
            else:
                current_stride *= 2
        else:
            conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


def build_backbone(name: str, output_stride: int, stochastic_depth: float = 0.0) -> nn.Module:
    """Encoder `name` (see BACKBONES) at `output_stride` (8 or 16), randomly initialised."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if not 0.0 <= stochastic_depth < 1.0:
        raise ValueError(f"stochastic_depth must be in [0, 1), got {stochastic_depth}")
    if name in ("mobilenet_v2", "efficientnet_lite0"):
        if stochastic_depth > 0:
            raise ValueError(
                f"stochastic_depth is implemented for the ResNet backbones only; {name}'s "
                "student noise is `dropout` (before the classifier)"
            )
        encoder = MobileNetV2Encoder if name == "mobilenet_v2" else EfficientNetLite0Encoder
        return encoder(output_stride)
    if name == "resnet50":
        return build_resnet(50, output_stride, deep_stem=False, stochastic_depth=stochastic_depth)
    return build_resnet(101, output_stride, deep_stem=True, stochastic_depth=stochastic_depth)
