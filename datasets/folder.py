"""Your own data set (`data.dataset: folder`): images and 8-bit label PNGs in a plain layout.

    <root>/<split>/images/<stem>.png|.jpg|.jpeg
    <root>/<split>/labels/<stem>.png

or a list file of `image label` lines relative to `root` (given as the split, or found as
`<root>/<split>.txt`, as for CamVid). Class names come from the config, in label-id order.
Raw label values become class ids through `label_map` (raw -> id; default: raw value = id),
the raw value `ignore_index` (and any value mapped to 255) is ignored, and any other value is
an error naming the file (the shared reader in source.py reports it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .camvid import is_list_file
from core.labels import IGNORE_INDEX, check_classes, folder_lut
from .source import SegmentationSource, SourceEntry, paired_folder_entries, read_list_file




def folder_entries_from_folders(root: Path, split: str, lut: np.ndarray,
                                unlabeled_ok: bool = False) -> list[SourceEntry]:
    """Pair `<split>/images/<stem>.png|jpg` with `<split>/labels/<stem>.png` (sorted by stem)."""
    return paired_folder_entries(root / split / "images", root / split / "labels", lut,
                                 what=f"folder dataset split {split!r}", list_file=root / f"{split}.txt",
                                 unlabeled_ok=unlabeled_ok)


def folder_entries_from_list(root: Path, list_path: str | os.PathLike,
                             lut: np.ndarray, unlabeled_ok: bool = False) -> list[SourceEntry]:
    # Ids are file stems, as in the folder layout: a list naming some images of a folder split
    # (e.g. data.labeled_split) then names them exactly as the scanned split does.
    return [SourceEntry(Path(image_text).stem, str(root / image_text),
                        None if label_text is None else str(root / label_text), lut)
            for image_text, label_text in read_list_file(list_path, unlabeled_ok=unlabeled_ok)]


def build_folder(root: str | os.PathLike, split: str, *, classes: Sequence[str], resize=None,
                 ignore_index: int = IGNORE_INDEX, label_map: Mapping[int, int] | None = None,
                 palette=None, unlabeled_ok: bool = False) -> SegmentationSource:
    """`split`: a split name (folder layout, or `<root>/<split>.txt` when that exists) or a
    path to a list file. `palette`: (C, 3) colours, default the project palette. `unlabeled_ok`:
    images without a label file are allowed (the pool of a campaign where a person labels the
    queried regions); they read as all void."""
    root = Path(root)
    classes = check_classes(classes)
    lut = folder_lut(len(classes), ignore_index, label_map)
    if is_list_file(split):
        entries = folder_entries_from_list(root, split, lut, unlabeled_ok)
    elif (root / f"{split}.txt").is_file():
        entries = folder_entries_from_list(root, root / f"{split}.txt", lut, unlabeled_ok)
    else:
        entries = folder_entries_from_folders(root, split, lut, unlabeled_ok)
    return SegmentationSource(root, classes, entries, resize=resize, name="folder", palette=palette)
