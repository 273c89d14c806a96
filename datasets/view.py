"""A training view over a source: which images, what target each one has, which transform.

The active-learning label pool plugs in through `ViewItem`: per image, the regions revealed so
far (None, "all", or a boolean grid of cells), an optional pseudo-label PNG and, for regions a
human annotator labeled, an optional human-label PNG. The target is built as: everything 255;
pseudo labels where the PNG is confident; the revealed labels wherever revealed (they always win
over pseudo labels): the human-label PNG's when the item has one, else the dataset's ground truth.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch.utils.data

from .classes import IGNORE_INDEX, identity_lut
from .source import SegmentationSource, map_label, read_label_png

Revealed = Union[None, str, np.ndarray]


@dataclass
class ViewItem:
    index: int                      # index into the source
    revealed: Revealed              # None | "all" | bool array (gh, gw) of revealed grid cells
    pseudo_path: str | None = None  # PNG of pseudo labels (255 = not confident), or None
    human_path: str | None = None   # PNG of class ids an annotator gave the revealed cells, or None
    # revealed=None with no pseudo_path is allowed: an all-255 target, e.g. for predicting the
    # unlabeled pool.


def expand_cells(cells: np.ndarray, image_size: tuple[int, int],
                 region_size: tuple[int, int], image_id: str = "") -> np.ndarray:
    """Boolean cell grid (ceil(H/rh), ceil(W/rw)) -> boolean pixel mask (H, W); edge cells are
    cut to the image, so they may be smaller than region_size."""
    (h, w), (rh, rw) = image_size, region_size
    expected = (math.ceil(h / rh), math.ceil(w / rw))
    if cells.dtype != np.bool_ or cells.shape != expected:
        raise ValueError(f"revealed cells of image {image_id!r} must be a bool array of shape "
                         f"{expected} for a {h}x{w} image with {rh}x{rw} regions, got "
                         f"{cells.dtype} {cells.shape}")
    return np.repeat(np.repeat(cells, rh, axis=0), rw, axis=1)[:h, :w]


class SegmentationView(torch.utils.data.Dataset):
    """view.sample(i, rng) -> {"image": uint8 (3, h, w), "label": uint8 (h, w), "id": str, "index": int},
    the transform drawing its randomness from `rng`: the training streams (engine/data.py) pass
    one per stream position, so augmentations are the same in every worker and after a resume.
    view[i] is sample(i, default_rng([0, i])): the fixed passes (evaluation, pseudo labels), whose
    transform draws nothing.
    """

    def __init__(self, source: SegmentationSource, items: Sequence[ViewItem], transform,
                 region_size: tuple[int, int] = (30, 30)):
        self.source = source
        self.items = list(items)
        self.transform = transform
        if len(region_size) != 2 or min(region_size) <= 0:
            raise ValueError(f"region_size must be (rows, cols) > 0, got {region_size!r}")
        self.region_size = (int(region_size[0]), int(region_size[1]))
        # Pseudo and human labels are stored as train ids by the engine: 0..C-1 or 255.
        self._ids_lut = identity_lut(source.num_classes)
        for item in self.items:
            self._check_item(item)

    def _check_item(self, item: ViewItem) -> None:
        if not 0 <= item.index < len(self.source):
            raise IndexError(f"ViewItem index {item.index} outside source of {len(self.source)}")
        revealed = item.revealed
        if not (revealed is None or (isinstance(revealed, str) and revealed == "all")
                or isinstance(revealed, np.ndarray)):
            raise ValueError(f"ViewItem.revealed must be None, 'all' or a bool cell array, got "
                             f"{revealed!r} for image {self.source.ids[item.index]!r}")
        if item.human_path is not None and not isinstance(revealed, np.ndarray):
            # "all" means the dataset's labels; a human-label PNG only covers revealed cells.
            raise ValueError(f"ViewItem.human_path needs a bool cell array in `revealed`, got "
                             f"{revealed!r} for image {self.source.ids[item.index]!r}")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 image (H, W, 3), uint8 target (H, W)) of item i, before the transform."""
        item = self.items[i]
        img, gt = self.source.read(item.index)
        target = np.full(gt.shape, IGNORE_INDEX, dtype=np.uint8)
        if item.pseudo_path is not None:
            target = self._read_ids(item.pseudo_path, gt.shape, "pseudo-label")
        if isinstance(item.revealed, str):  # "all"
            target = gt
        elif item.revealed is not None:
            mask = expand_cells(item.revealed, gt.shape, self.region_size,
                                self.source.ids[item.index])
            revealed = gt if item.human_path is None else self._read_ids(item.human_path, gt.shape, "human-label")
            target[mask] = revealed[mask]
        return img, target

    def _read_ids(self, path: str, shape: tuple[int, int], what: str) -> np.ndarray:
        """A PNG of train ids (0..C-1, 255) written by the engine, checked against the image."""
        ids = read_label_png(os.fspath(path))
        if ids.shape != shape:
            raise ValueError(f"{what} PNG is {ids.shape[0]}x{ids.shape[1]}, the image "
                             f"is {shape[0]}x{shape[1]}: {path}")
        return map_label(ids, self._ids_lut, os.fspath(path), self.source.num_classes)

    def sample(self, i: int, rng: np.random.Generator) -> dict:
        if not 0 <= i < len(self.items):
            raise IndexError(f"view index {i} out of range for {len(self.items)} items")
        img, target = self.load(i)
        image, label = self.transform(img, target, rng)
        index = self.items[i].index
        return {"image": image, "label": label, "id": self.source.ids[index], "index": index}

    def __getitem__(self, i: int) -> dict:
        return self.sample(i, np.random.default_rng([0, i]))


def full_view(source: SegmentationSource, transform,
              region_size: tuple[int, int] = (30, 30)) -> SegmentationView:
    """Every image of the source, fully labeled."""
    return SegmentationView(source, [ViewItem(i, "all") for i in range(len(source))], transform,
                            region_size=region_size)
