"""Model inference used by evaluation, pseudo labelling and region scoring alike:
whole-image or sliding-window prediction, optionally multi-scale and flipped, averaged as
softmax probabilities at the input resolution.

Throughput: the crops of one call -- every sliding window of every image in the batch, or the
whole images, flipped copies included -- go through the model in batches of `window_batch`
crops (one forward per batch instead of one per window), under `torch.inference_mode`. The
arithmetic is that of one window at a time: each window's logits are summed into place and
divided by how many windows cover the pixel, then softmax probabilities are averaged over
scales and flips.
Batching changes results only at float precision (convolution kernels may sum in another order
for another batch size): an image's result is bit-for-bit reproducible when it is predicted
with the same batch companions, which is why the pseudo-label pass predicts one image at a
time by default (`pseudo.batch_size`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets.transforms import normalize_images
from core.precision import autocast

MODES = ("whole", "slide")


def window_origins(size: tuple[int, int], window, stride) -> list[tuple[int, int]]:
    """Top-left corners (y0, x0) of the windows tiling an (H, W) image at least one window
    large: every `stride` pixels, the last row/column of windows moved back to end at the edge."""
    (H, W), (wh, ww), (sh, sw) = size, window, stride
    rows = max(math.ceil((H - wh) / sh), 0) + 1
    cols = max(math.ceil((W - ww) / sw), 0) + 1
    return [(min(r * sh, H - wh), min(c * sw, W - ww)) for r in range(rows) for c in range(cols)]


def _forward(model, crops: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last:
        crops = crops.contiguous(memory_format=torch.channels_last)
    return model(crops).float()


def _slide_logits(model, images: torch.Tensor, window, stride, num_classes: int, window_batch: int,
                  channels_last: bool) -> torch.Tensor:
    """Average logits of overlapping windows; the image is zero-padded up to one window. The
    windows of all images are cut, `window_batch` at a time, into one batch per forward."""
    n, _, h, w = images.shape
    wh, ww = window
    padded = F.pad(images, (0, max(ww - w, 0), 0, max(wh - h, 0)))
    H, W = padded.shape[-2:]
    origins = window_origins((H, W), window, stride)
    counts = images.new_zeros((1, 1, H, W), dtype=torch.float32)
    for y0, x0 in origins:
        counts[:, :, y0:y0 + wh, x0:x0 + ww] += 1
    logits = images.new_zeros((n, num_classes, H, W), dtype=torch.float32)
    crops = [(j, y0, x0) for j in range(n) for y0, x0 in origins]
    for first in range(0, len(crops), window_batch):
        chunk = crops[first:first + window_batch]
        batch = torch.stack([padded[j, :, y0:y0 + wh, x0:x0 + ww] for j, y0, x0 in chunk])
        out = _forward(model, batch, channels_last)
        for k, (j, y0, x0) in enumerate(chunk):
            logits[j, :, y0:y0 + wh, x0:x0 + ww] += out[k]
    return (logits / counts)[:, :, :h, :w]


def _whole_logits(model, images: torch.Tensor, window_batch: int, channels_last: bool) -> torch.Tensor:
    return torch.cat([_forward(model, images[i:i + window_batch], channels_last)
                      for i in range(0, images.shape[0], window_batch)])


@torch.inference_mode()
def predict_probs(model, images: torch.Tensor, *, num_classes: int, scales=(1.0,), flip: bool = False,
                  mode: str = "whole", window=(768, 768), stride=(512, 512), amp: str = "none",
                  channels_last: bool = False, window_batch: int = 8) -> torch.Tensor:
    """Softmax probabilities (N, C, H, W), float32, averaged over scales (and flips).

    `images`: normalised float (N, 3, H, W). `window_batch`: crops per forward pass (sliding
    windows in "slide" mode, images in "whole" mode; a flipped copy counts as one more image)."""
    if mode not in MODES:
        raise ValueError(f"inference mode must be one of {MODES}, got {mode!r}")
    if window_batch < 1:
        raise ValueError(f"window_batch must be at least 1, got {window_batch}")
    n, _, h, w = images.shape
    total = images.new_zeros((n, num_classes, h, w), dtype=torch.float32)
    count = 0
    with autocast(images.device, amp):
        for scale in scales:
            x = images if scale == 1.0 else F.interpolate(
                images, scale_factor=scale, mode="bilinear", align_corners=False)
            if flip:  # the flipped copies share the forward batches of the originals
                x = torch.cat([x, x.flip(-1)])
            if mode == "slide":
                logits = _slide_logits(model, x, window, stride, num_classes, window_batch, channels_last)
            else:
                logits = _whole_logits(model, x, window_batch, channels_last)
            parts = [logits[:n], logits[n:].flip(-1)] if flip else [logits]
            for part in parts:
                if part.shape[-2:] != (h, w):
                    part = F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)
                total += part.softmax(dim=1)
                count += 1
    return total / count


def config_settings(cfg, *, scales, flip: bool, amp: str) -> dict:
    """predict_probs keywords from a config: the window settings of `eval`, with the scales and
    flip of the pass (evaluation: eval.*, pseudo labels: pseudo.*)."""
    return {"scales": tuple(scales), "flip": flip, "mode": cfg.eval.mode, "window": tuple(cfg.eval.window),
            "stride": tuple(cfg.eval.stride), "amp": amp, "channels_last": cfg.runtime.channels_last,
            "window_batch": cfg.eval.window_batch}


def predict_loader(model, loader, device: torch.device, num_classes: int, settings: dict, *,
                   desc: str, show: bool):
    """Yield (samples, probs) for every equal-size group of every batch of an ordered loader
    (`engine.data.ordered_loader`): uint8 images copied to `device` without blocking, then
    normalised there and predicted."""
    for batch in tqdm(loader, desc=desc, disable=not show, leave=False, dynamic_ncols=True):
        for group in batch:
            images = normalize_images(group["image"].to(device, non_blocking=True))
            yield group, predict_probs(model, images, num_classes=num_classes, **settings)
