"""Class names and raw-label -> train-id lookup tables for CamVid and Cityscapes.

A lookup table (LUT) has 256 int16 entries, one per possible uint8 label value: the train id
(0..C-1), 255 for "ignore", or -1 for a value that must never occur in that kind of label file.
Loaders map every label through a LUT and reject the file when a -1 shows up, so a corrupt or
wrongly encoded label stops the run instead of silently training on garbage.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from core.labels import IGNORE_INDEX, INVALID  # noqa: F401 (the one definition)

# SegNet's 11-class CamVid labelling; raw value 11 is "void".
CAMVID_CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
                  "pedestrian", "bicyclist")
CAMVID_VOID = 11


class CityscapesLabel(NamedTuple):
    name: str
    id: int        # value in *_gtFine_labelIds.png
    train_id: int  # 0..18, or 255 = not evaluated


# The official Cityscapes label definition (cityscapesscripts/helpers/labels.py), reduced to the
# three columns a loader needs. License plate (id -1) is never drawn into labelIds images.
CITYSCAPES_LABELS = (
    CityscapesLabel("unlabeled", 0, 255),
    CityscapesLabel("ego vehicle", 1, 255),
    CityscapesLabel("rectification border", 2, 255),
    CityscapesLabel("out of roi", 3, 255),
    CityscapesLabel("static", 4, 255),
    CityscapesLabel("dynamic", 5, 255),
    CityscapesLabel("ground", 6, 255),
    CityscapesLabel("road", 7, 0),
    CityscapesLabel("sidewalk", 8, 1),
    CityscapesLabel("parking", 9, 255),
    CityscapesLabel("rail track", 10, 255),
    CityscapesLabel("building", 11, 2),
    CityscapesLabel("wall", 12, 3),
    CityscapesLabel("fence", 13, 4),
    CityscapesLabel("guard rail", 14, 255),
    CityscapesLabel("bridge", 15, 255),
    CityscapesLabel("tunnel", 16, 255),
    CityscapesLabel("pole", 17, 5),
    CityscapesLabel("polegroup", 18, 255),
    CityscapesLabel("traffic light", 19, 6),
    CityscapesLabel("traffic sign", 20, 7),
    CityscapesLabel("vegetation", 21, 8),
    CityscapesLabel("terrain", 22, 9),
    CityscapesLabel("sky", 23, 10),
    CityscapesLabel("person", 24, 11),
    CityscapesLabel("rider", 25, 12),
    CityscapesLabel("car", 26, 13),
    CityscapesLabel("truck", 27, 14),
    CityscapesLabel("bus", 28, 15),
    CityscapesLabel("caravan", 29, 255),
    CityscapesLabel("trailer", 30, 255),
    CityscapesLabel("train", 31, 16),
    CityscapesLabel("motorcycle", 32, 17),
    CityscapesLabel("bicycle", 33, 18),
)

CITYSCAPES_CLASSES = tuple(
    label.name for label in sorted((lb for lb in CITYSCAPES_LABELS if lb.train_id != 255),
                                   key=lambda lb: lb.train_id))


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, INVALID, dtype=np.int16)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    lut.setflags(write=False)
    return lut


def identity_lut(num_classes: int, extra_ignore: tuple[int, ...] = ()) -> np.ndarray:
    """LUT for labels already stored as train ids: 0..C-1 stay, 255 (and `extra_ignore`) -> 255."""
    mapping = {v: v for v in range(num_classes)}
    mapping.update({v: IGNORE_INDEX for v in (*extra_ignore, IGNORE_INDEX)})
    return _lut(mapping)


# CamVid labels: 0..10 are classes, 11 (void) and 255 are ignored, anything else is an error.
CAMVID_LUT = identity_lut(len(CAMVID_CLASSES), extra_ignore=(CAMVID_VOID,))
# Cityscapes *_labelTrainIds.png: 0..18 or 255.
CITYSCAPES_TRAINID_LUT = identity_lut(len(CITYSCAPES_CLASSES))
# Cityscapes *_labelIds.png: ids 0..33 mapped by the official table; 255 tolerated as ignore.
CITYSCAPES_ID_LUT = _lut({**{lb.id: lb.train_id for lb in CITYSCAPES_LABELS},
                          IGNORE_INDEX: IGNORE_INDEX})

# Colours of class ids in prediction / label pictures: CamVid's usual colours first; the rest
# are distinct enough for the 19 Cityscapes classes. A data set may bring its own (data.palette).
PALETTE = np.array([
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [0, 0, 192], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [220, 20, 60],
    [0, 0, 142], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32], [250, 170, 30],
    [220, 220, 0],
], dtype=np.uint8)
PALETTE.setflags(write=False)


def default_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: the project palette, repeated when there are more classes."""
    return PALETTE[np.arange(num_classes) % len(PALETTE)]


def colorize(label: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """(H, W) class ids (255 = ignore, drawn black) -> (H, W, 3) uint8 in `palette` colours
    ((K, 3) uint8; ids past its end wrap around)."""
    out = np.zeros(label.shape + (3,), dtype=np.uint8)
    valid = label != IGNORE_INDEX
    out[valid] = palette[label[valid] % len(palette)]
    return out
