"""Cityscapes in the official layout:
`leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png` and
`gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png` (or only `..._gtFine_labelIds.png`).

`*_labelTrainIds.png` is what cityscapesscripts' createTrainIdLabelImgs writes; a plain download
has only `*_labelIds.png`, which we map to train ids with the official table (classes.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import MissingInput

from .camvid import is_list_file
from .classes import CITYSCAPES_CLASSES, CITYSCAPES_ID_LUT, CITYSCAPES_TRAINID_LUT
from .source import SegmentationSource, SourceEntry, read_list_file

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAINID_SUFFIX = "_gtFine_labelTrainIds.png"
ID_SUFFIX = "_gtFine_labelIds.png"


def _label_file(trainid_path: Path) -> tuple[Path, object]:
    """The trainIds file when present, else the labelIds file beside it (with its LUT)."""
    if trainid_path.is_file():
        return trainid_path, CITYSCAPES_TRAINID_LUT
    id_path = trainid_path.with_name(trainid_path.name[:-len(TRAINID_SUFFIX)] + ID_SUFFIX)
    if id_path.is_file():
        return id_path, CITYSCAPES_ID_LUT
    raise MissingInput(f"Cityscapes label not found: neither {trainid_path} nor {id_path}")


def _entry(image_path: Path, label_path: Path) -> SourceEntry:
    """Labels named *_labelTrainIds.png fall back to *_labelIds.png; a list naming the
    labelIds file directly reads that file."""
    if not image_path.name.endswith(IMAGE_SUFFIX):
        raise ValueError(f"Cityscapes image name must end with {IMAGE_SUFFIX}: {image_path}")
    if label_path.name.endswith(TRAINID_SUFFIX):
        label_path, lut = _label_file(label_path)
    elif label_path.name.endswith(ID_SUFFIX):
        lut = CITYSCAPES_ID_LUT
    else:
        raise ValueError(f"Cityscapes label name must end with {TRAINID_SUFFIX} or {ID_SUFFIX}: "
                         f"{label_path}")
    image_id = image_path.name[:-len(IMAGE_SUFFIX)]
    return SourceEntry(image_id, str(image_path), str(label_path), lut)


def cityscapes_entries_from_folders(root: Path, split: str) -> list[SourceEntry]:
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise MissingInput(f"Cityscapes split {split!r}: folder not found: {image_dir}")
    entries = []
    for image_path in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        city = image_path.parent.name
        stem = image_path.name[:-len(IMAGE_SUFFIX)]
        label_path = root / "gtFine" / split / city / f"{stem}{TRAINID_SUFFIX}"
        entries.append(_entry(image_path, label_path))
    return entries


def cityscapes_entries_from_list(root: Path, list_path: str | os.PathLike) -> list[SourceEntry]:
    return [_entry(root / image_text, root / label_text)
            for image_text, label_text in read_list_file(list_path)]


def build_cityscapes(root: str | os.PathLike, split: str, resize=None) -> SegmentationSource:
    """`split`: "train" / "val" / "test" (scan folders) or a list file (e.g.
    splits/cityscapes/1_16/labeled.txt). resize=(688, 688) for active learning; None keeps
    the native 1024x2048."""
    root = Path(root)
    if is_list_file(split):
        entries = cityscapes_entries_from_list(root, split)
    else:
        entries = cityscapes_entries_from_folders(root, split)
    return SegmentationSource(root, CITYSCAPES_CLASSES, entries, resize=resize, name="cityscapes")
