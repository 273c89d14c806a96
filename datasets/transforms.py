"""Joint image/label transforms (weak and strong augmentation, evaluation).

Every transform is `__call__(img_uint8_hwc, label_uint8_hw, rng) -> (image_tensor, label_tensor)`
and draws randomness ONLY from `rng` (a numpy Generator the view seeds per sample), so a resumed
run reproduces the same augmentations and DataLoader workers never share random state.
`apply(...)` returns the augmented uint8 arrays before normalisation (used by tests and
visualisation). Labels use cv2.INTER_NEAREST_EXACT (pixel-centre aligned with the bilinear/area
image resize). Image ops use cv2/numpy: measured fast enough for 2 workers to feed a GPU step
(benchmarks/data_loading.py). Labels are only ever resized with nearest neighbour.

Padding and cutout set image pixels to 0 (black, before normalisation) and label pixels to 255.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from core.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN_255 = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
_INV_STD_255 = 1.0 / (torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL/torchvision


def to_tensors(img: np.ndarray, lab: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W, 3) RGB + uint8 (H, W) -> uint8 (3, H, W) + uint8 (H, W) tensors.

    Samples stay uint8 until they reach the device: a batch then crosses the host-device link
    at a quarter (images) and an eighth (labels) of the float32/int64 size, and normalisation
    runs on the device (`normalize_images`), not in the loader workers.
    """
    image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
    label = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.uint8))
    return image, label


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) RGB on any device -> float32 ImageNet-normalised, on the same device."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"normalize_images: expected uint8 (N, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    mean = _MEAN_255.to(images.device)
    inv_std = _INV_STD_255.to(images.device)
    return (images.float() - mean) * inv_std


def image_to_hwc(image: torch.Tensor) -> np.ndarray:
    """A sample's uint8 (3, H, W) image tensor -> uint8 (H, W, 3) array (for display)."""
    return image.detach().cpu().permute(1, 2, 0).numpy()


def _pair(value, name: str) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair, got {value!r}")
    return tuple(value)


def _probability(value, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


class EvalTransform:
    """No change: the source already delivers the evaluation resolution (tensors only)."""

    def apply(self, img, lab, rng=None):
        return img, lab

    def __call__(self, img, lab, rng=None):
        return to_tensors(img, lab)

    def __repr__(self) -> str:
        return "EvalTransform()"


class WeakAug:
    """Random rescale (image area/bilinear, label nearest), crop with padding (image 0, label
    255) when the rescaled image is smaller than the crop, random horizontal flip."""

    def __init__(self, crop_size, scale_range=(0.5, 2.0), hflip: bool = True):
        self.crop_size = tuple(int(v) for v in _pair(crop_size, "crop_size"))
        if min(self.crop_size) <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size!r}")
        self.scale_range = tuple(float(v) for v in _pair(scale_range, "scale_range"))
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range!r}")
        self.hflip = bool(hflip)

    def apply(self, img: np.ndarray, lab: np.ndarray, rng: np.random.Generator):
        # Draw in a fixed order, independent of the image, so StrongAug's geometry equals
        # WeakAug's for the same rng.
        scale = rng.uniform(*self.scale_range)
        h, w = lab.shape
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        if (new_h, new_w) != (h, w):
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            img = cv2.resize(img, (new_w, new_h), interpolation=interp)
            lab = cv2.resize(lab, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)

        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - new_h, 0), max(crop_w - new_w, 0)
        if pad_h or pad_w:
            img = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            lab = cv2.copyMakeBorder(lab, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                     value=IGNORE_INDEX)
        y0 = int(rng.integers(0, lab.shape[0] - crop_h + 1))
        x0 = int(rng.integers(0, lab.shape[1] - crop_w + 1))
        img = img[y0:y0 + crop_h, x0:x0 + crop_w]
        lab = lab[y0:y0 + crop_h, x0:x0 + crop_w]

        flip = rng.random() < 0.5
        if self.hflip and flip:
            img, lab = img[:, ::-1], lab[:, ::-1]
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    def __call__(self, img, lab, rng):
        return to_tensors(*self.apply(img, lab, rng))

    def __repr__(self) -> str:
        return f"WeakAug(crop_size={self.crop_size}, scale_range={self.scale_range}, hflip={self.hflip})"


class StrongAug:
    """WeakAug, then color jitter (brightness, contrast, saturation, hue in random order),
    Gaussian blur, and cutout (image 0, label 255): the paper's strong set. Random grayscale
    (`grayscale_p`, SimCLR-style) is an option, off by default and in every paper config."""

    def __init__(self, crop_size, scale_range=(0.5, 2.0), blur_p=0.5,
                 jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.0,
                 cutout_p=0.5, cutout_frac=(0.02, 0.2), hflip: bool = True):
        self.weak = WeakAug(crop_size, scale_range, hflip)
        self.blur_p = _probability(blur_p, "blur_p")
        self.jitter_p = _probability(jitter_p, "jitter_p")
        self.grayscale_p = _probability(grayscale_p, "grayscale_p")
        self.cutout_p = _probability(cutout_p, "cutout_p")
        if not isinstance(jitter, (tuple, list)) or len(jitter) != 4 or min(jitter) < 0:
            raise ValueError("jitter must be (brightness, contrast, saturation, hue) >= 0, "
                             f"got {jitter!r}")
        if jitter[3] > 0.5:
            raise ValueError(f"hue jitter must be <= 0.5, got {jitter[3]!r}")
        self.jitter = tuple(float(v) for v in jitter)
        self.cutout_frac = tuple(float(v) for v in _pair(cutout_frac, "cutout_frac"))
        if not 0 < self.cutout_frac[0] <= self.cutout_frac[1] <= 1:
            raise ValueError(f"cutout_frac must be 0 < low <= high <= 1, got {cutout_frac!r}")

    def apply(self, img: np.ndarray, lab: np.ndarray, rng: np.random.Generator):
        img, lab = self.weak.apply(img, lab, rng)
        if rng.random() < self.jitter_p:
            img = self._color_jitter(img, rng)
        if rng.random() < self.grayscale_p:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        if rng.random() < self.blur_p:
            sigma = rng.uniform(0.1, 2.0)
            img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
        if rng.random() < self.cutout_p:
            img, lab = self._cutout(img, lab, rng)
        return img, lab

    def __call__(self, img, lab, rng):
        return to_tensors(*self.apply(img, lab, rng))

    def _color_jitter(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """torchvision ColorJitter semantics (factors drawn uniformly, the four ops in random
        order, each result clipped to 0..255) on uint8 with cv2 lookup tables and blends:
        ~10x faster than float arithmetic, which matters for keeping workers ahead of a GPU."""
        b, c, s, h = self.jitter
        factors = [rng.uniform(max(0.0, 1 - v), 1 + v) for v in (b, c, s)]
        hue_shift = rng.uniform(-h, h)
        levels = np.arange(256, dtype=np.float32)
        for op in rng.permutation(4):
            if op == 0:
                img = cv2.LUT(img, _to_uint8(levels * factors[0]))
            elif op == 1:  # blend with the mean gray level
                mean = float(np.dot(cv2.mean(img)[:3], _LUMA))  # = mean of the gray image
                img = cv2.LUT(img, _to_uint8(levels * factors[1] + mean * (1 - factors[1])))
            elif op == 2:  # blend with the per-pixel gray image (addWeighted saturates to 0..255)
                gray = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
                img = cv2.addWeighted(img, factors[2], gray, 1 - factors[2], 0)
            else:
                img = _shift_hue(img, hue_shift)
        return img

    def _cutout(self, img, lab, rng):
        h, w = lab.shape
        area = rng.uniform(*self.cutout_frac) * h * w
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        cut_h = min(h, max(1, round(math.sqrt(area * aspect))))
        cut_w = min(w, max(1, round(math.sqrt(area / aspect))))
        y0 = int(rng.integers(0, h - cut_h + 1))
        x0 = int(rng.integers(0, w - cut_w + 1))
        img, lab = img.copy(), lab.copy()
        img[y0:y0 + cut_h, x0:x0 + cut_w] = 0
        lab[y0:y0 + cut_h, x0:x0 + cut_w] = IGNORE_INDEX
        return img, lab

    def __repr__(self) -> str:
        return (f"StrongAug({self.weak!r}, jitter={self.jitter}, jitter_p={self.jitter_p}, "
                f"grayscale_p={self.grayscale_p}, blur_p={self.blur_p}, "
                f"cutout_p={self.cutout_p}, cutout_frac={self.cutout_frac})")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _shift_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotate hue by `shift` turns (-0.5..0.5); OpenCV stores 8-bit hue as 0..179."""
    if shift == 0:
        return img
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hue = hsv[..., 0].astype(np.int16) + int(round(shift * 180))
    hsv[..., 0] = np.mod(hue, 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
