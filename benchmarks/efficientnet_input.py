"""Which input normalisation and padding do the packaged EfficientNet-Lite0 ImageNet weights
expect? Measured, not assumed.

A BatchNorm layer stores the running mean and variance of its input over the training set
(ImageNet). The stem conv's output, fed images normalised the way the weights were trained,
should have (about) those statistics; a wrong normalisation shifts and scales them.

Two measurements:
1. Implied input mean (independent of any data set): on a constant image the stem's output is
   its weights summed over space times the per-channel input mean, so the stored running means
   of `_bn0` (32 channels, 3 unknowns) give the mean input the weights saw, by least squares.
   Each candidate normalisation maps ImageNet's mean pixel (123.7, 116.3, 103.5) to some value;
   the right one maps it onto the implied mean.
2. Real images: CamVid is much darker than ImageNet (mean pixel ~(52, 61, 65)), so its pixels
   are first given ImageNet's per-channel mean and std; then, over the live channels of `_bn0`
   (after the stem) and of `_blocks.1._bn1` / `_blocks.3._bn1` (after the 3x3 and 5x5 stride-2
   depthwise convs, which also see the padding):

       median |z|   z = (measured mean - running mean) / sqrt(running var), per channel
       log2 R       R = summed measured variance / summed running variance (the total
                    variance, dominated by the high-variance, low-frequency channels; the
                    per-channel ratio of the weak channels follows image texture, JPEG
                    compression and blur more than the normalisation)

   0 and 0 are the statistics the weights were trained with.

Images: real CamVid train when ../shared/data/camvid is present (else pass --root).

    python benchmarks/efficientnet_input.py [--root DIR] [--images 40]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.efficientnet_lite import EfficientNetLite0Encoder  # noqa: E402
from models.pretrained import efficientnet_lite0_file, load_backbone_state, read_state_file  # noqa: E402

REAL_CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255
NORMALISATIONS = {
    "ImageNet mean/std": lambda x: (x - IMAGENET_MEAN) / IMAGENET_STD,
    "(x - 127) / 128 (TF Lite)": lambda x: (x - 127.0) / 128.0,
    "x / 255": lambda x: x / 255.0,
}


IMAGENET_MEAN_PIXEL = np.array([123.675, 116.28, 103.53])
IMAGENET_STD_PIXEL = np.array([58.395, 57.12, 57.375])


def load_images(root: Path, count: int) -> np.ndarray:
    files = sorted((root / "train").glob("*"))[:count]
    if not files:
        raise SystemExit(f"error: no images in {root / 'train'}")
    return np.stack([cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]).astype(np.float64)


def half_size(raw: np.ndarray) -> np.ndarray:
    return np.stack([cv2.resize(im, (im.shape[1] // 2, im.shape[0] // 2), interpolation=cv2.INTER_AREA) for im in raw])


def imagenet_photometry(raw: np.ndarray) -> np.ndarray:
    """Give the images ImageNet's per-channel pixel mean and std (removes CamVid's darkness)."""
    mean, std = raw.mean(axis=(0, 1, 2)), raw.std(axis=(0, 1, 2))
    return (raw - mean) / std * IMAGENET_STD_PIXEL + IMAGENET_MEAN_PIXEL


def implied_input_mean(encoder: EfficientNetLite0Encoder) -> tuple:
    """Least-squares mean input (per RGB channel) that explains `_bn0`'s running means."""
    bn, weight = encoder._bn0, encoder._conv_stem.weight.detach().sum(dim=(2, 3))  # (32, 3)
    live = bn.running_var > 1e-6
    solution = torch.linalg.lstsq(weight[live], bn.running_mean[live].unsqueeze(1)).solution.squeeze(1)
    residual = (weight[live] @ solution - bn.running_mean[live]).pow(2).mean().sqrt()
    return solution, float(residual / bn.running_mean[live].pow(2).mean().sqrt())


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's "same" padding: total pad max(k - s, 0) for an input divisible by s, the odd
    pixel going to the bottom / right."""
    total = max(kernel - stride, 0)
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


def channel_stats(x: torch.Tensor):
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3))


def compare(stats, bn) -> tuple:
    mean, var = stats
    live = bn.running_var > 1e-6  # channels whose filters are all zero never vary
    z = (mean[live] - bn.running_mean[live]) / bn.running_var[live].sqrt()
    log_total_ratio = torch.log2(var[live].sum() / bn.running_var[live].sum())
    return float(z.abs().median()), float(log_total_ratio)


def strided_dw_stats(block, x: torch.Tensor, tf_padding: bool):
    """Stats of a stride-2 block's depthwise conv output (before its BN); x is the block input."""
    x = block.act(block._bn0(block._expand_conv(x)))
    dw = block._depthwise_conv
    if tf_padding:
        out = F.conv2d(tf_same_pad(x, dw.kernel_size[0], 2), dw.weight, stride=2, groups=dw.groups)
    else:
        out = F.conv2d(x, dw.weight, stride=2, padding=dw.kernel_size[0] // 2, groups=dw.groups)
    return channel_stats(out)


def measure(encoder: EfficientNetLite0Encoder, images: torch.Tensor, tf_padding: bool) -> list:
    """[(name, measured stats, its BatchNorm)] for the stem and the 3x3 / 5x5 stride-2 depthwise
    convs (blocks 1 and 3). The layers between run as the encoder runs them."""
    stem = encoder._conv_stem
    if tf_padding:
        stem_out = F.conv2d(tf_same_pad(images, 3, 2), stem.weight, stride=2)
    else:
        stem_out = F.conv2d(images, stem.weight, stride=2, padding=1)
    rows = [("stem", channel_stats(stem_out), encoder._bn0)]
    x = encoder.act(encoder._bn0(stem_out))
    x = encoder._blocks[0](x)
    rows.append(("dw1 3x3", strided_dw_stats(encoder._blocks[1], x, tf_padding), encoder._blocks[1]._bn1))
    x = encoder._blocks[2](encoder._blocks[1](x))
    rows.append(("dw3 5x5", strided_dw_stats(encoder._blocks[3], x, tf_padding), encoder._blocks[3]._bn1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REAL_CAMVID)
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    raw = load_images(args.root, args.images)
    encoder = EfficientNetLite0Encoder(output_stride=16).eval()
    path = efficientnet_lite0_file()
    load_backbone_state(encoder, "efficientnet_lite0", read_state_file(path), path)
    print(f"weights {path}")
    implied, rel_residual = implied_input_mean(encoder)
    print(f"\n1. mean input implied by _bn0's running means: {np.round(implied.numpy(), 3)} "
          f"(relative fit residual {rel_residual:.3f})")
    for name, normalise in NORMALISATIONS.items():
        mapped = normalise(IMAGENET_MEAN_PIXEL)
        print(f"   {name:28s} maps ImageNet's mean pixel to {np.round(mapped, 3)}: "
              f"distance {np.linalg.norm(mapped - implied.numpy()):.3f}")
    print(f"\n2. {len(raw)} CamVid images from {args.root} at {raw.shape[1]}x{raw.shape[2]}, given ImageNet's "
          f"pixel mean/std (CamVid's own: {np.round(raw.mean(axis=(0, 1, 2)), 1)} / "
          f"{np.round(raw.std(axis=(0, 1, 2)), 1)})")
    for size_name, sized in ((f"{raw.shape[1]}x{raw.shape[2]}", raw), ("half size", half_size(raw))):
        matched = imagenet_photometry(sized)
        print(f"   at {size_name} ({matched.shape[1]}x{matched.shape[2]}):")
        with torch.no_grad():
            for name, normalise in NORMALISATIONS.items():
                images = torch.from_numpy(normalise(matched)).permute(0, 3, 1, 2).float()
                for tf_padding in (False, True):
                    padding = "TF same" if tf_padding else "symmetric"
                    cells = [f"{layer} |z| {z:.3f} log2 R {r:+.2f}"
                             for layer, stats, bn in measure(encoder, images, tf_padding)
                             for z, r in [compare(stats, bn)]]
                    print(f"   {name:28s} {padding:10s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
