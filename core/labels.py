"""Label-value conventions every layer shares: the ignore index, the "must never occur" value of a
lookup table, and the checks of a user's class list, label mapping and palette (the config
refuses bad ones when it loads; the folder dataset builds its lookup table with the same code).

A lookup table (LUT) has 256 int16 entries, one per possible uint8 label value: the class id
(0..C-1), IGNORE_INDEX, or INVALID for a value that must never occur in that kind of label file.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

IGNORE_INDEX = 255  # label value of pixels no loss or metric counts (void, unrevealed, unconfident)
INVALID = -1

def check_classes(classes) -> tuple[str, ...]:
    """At least two distinct names, and few enough that every id fits below 255 (= ignore)."""
    if classes is None:
        raise ValueError("the folder dataset needs data.classes (class names in label-id order)")
    classes = tuple(classes)
    if not 2 <= len(classes) <= IGNORE_INDEX:
        raise ValueError(f"data.classes: need 2..{IGNORE_INDEX} class names, got {len(classes)}")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ValueError(f"data.classes: duplicate class names {duplicates}")
    return classes


def folder_lut(num_classes: int, ignore_index: int = IGNORE_INDEX,
               label_map: Mapping[int, int] | None = None) -> np.ndarray:
    """256-entry raw value -> class id table (see classes.py): `label_map` (or the identity
    0..C-1), `ignore_index` -> 255, everything else INVALID so that reading it fails."""
    if not 0 <= ignore_index <= 255:
        raise ValueError(f"data.ignore_index must be a raw label value 0..255, got {ignore_index}")
    mapping = dict(label_map) if label_map is not None else {v: v for v in range(num_classes)}
    if ignore_index in mapping:
        raise ValueError(f"data.ignore_index {ignore_index} is also a class value "
                         f"({'a data.label_map key' if label_map is not None else 'a class id'}); "
                         f"a raw value is either a class or ignored")
    lut = np.full(256, INVALID, dtype=np.int16)
    for raw, class_id in mapping.items():
        if not 0 <= raw <= 255:
            raise ValueError(f"data.label_map: raw label value {raw} is outside 0..255 (8-bit PNG)")
        if not (0 <= class_id < num_classes or class_id == IGNORE_INDEX):
            raise ValueError(f"data.label_map: {raw} -> {class_id}: class id must be in "
                             f"0..{num_classes - 1} (or {IGNORE_INDEX} to ignore the value)")
        lut[raw] = class_id
    lut[ignore_index] = IGNORE_INDEX
    lut.setflags(write=False)
    return lut


def check_palette(palette, num_classes: int) -> np.ndarray:
    """A user palette as uint8 (num_classes, 3); wrong length or values outside 0..255 raise."""
    arr = np.asarray(palette)
    if arr.shape != (num_classes, 3) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"palette must be {num_classes} [r, g, b] integer triples (one per class), "
                         f"got shape {arr.shape}")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"palette values must be in 0..255, got {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)
