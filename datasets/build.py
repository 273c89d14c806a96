"""`build_source`: the one entry point the engine uses to open a dataset split."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .camvid import build_camvid
from .cityscapes import build_cityscapes
from core.labels import IGNORE_INDEX, check_classes, check_palette
from .classes import CAMVID_CLASSES, CITYSCAPES_CLASSES, default_palette
from .folder import build_folder
from .source import SegmentationSource

DATASETS = ("camvid", "cityscapes", "synthetic", "folder")


def build_source(dataset: str, root: str | os.PathLike, split: str, resize=None, *,
                 classes: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX,
                 label_map: Mapping[int, int] | None = None, palette=None,
                 unlabeled_ok: bool = False) -> SegmentationSource:
    """Index one split and check that each of its files exists (no image is decoded here).

    dataset: "camvid" | "cityscapes" | "synthetic" | "folder" (synthetic = a generated set in
    CamVid's layout; build_source only reads it, `generate_synthetic` must have written it first;
    folder = your own data, see folder.py). split: a split name ("train", "val", "test") or a
    path to a list file of `image label` lines relative to `root`. resize: None (native size)
    or (h, w). classes / ignore_index / label_map / palette: the folder dataset's settings
    (the other datasets define their own and refuse them). unlabeled_ok: the folder dataset
    may list images without label (query.oracle=human's pool; the other data sets are labelled).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    _check_folder_only(dataset, classes=classes, ignore_index=ignore_index, label_map=label_map,
                       palette=palette)
    root = Path(root)
    if not root.is_dir():
        hint = " (run generate_synthetic first)" if dataset == "synthetic" else ""
        raise FileNotFoundError(f"{dataset} dataset root not found: {root}{hint}")
    if dataset == "cityscapes":
        source = build_cityscapes(root, split, resize=resize)
    elif dataset == "folder":
        source = build_folder(root, split, classes=classes, resize=resize, ignore_index=ignore_index,
                              label_map=label_map, palette=palette, unlabeled_ok=unlabeled_ok)
    else:
        source = build_camvid(root, split, resize=resize, name=dataset)
    source.check_files()
    return source


def dataset_classes(dataset: str, classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """Class names of a dataset without indexing any split (e.g. to predict unlabeled images)."""
    if dataset == "folder":
        return check_classes(classes)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    _check_folder_only(dataset, classes=classes)
    return CITYSCAPES_CLASSES if dataset == "cityscapes" else CAMVID_CLASSES


def dataset_palette(num_classes: int, palette=None) -> np.ndarray:
    """(C, 3) uint8 colours: the given palette (checked) or the project default."""
    return default_palette(num_classes) if palette is None else check_palette(palette, num_classes)


def _check_folder_only(dataset: str, *, classes=None, ignore_index: int = IGNORE_INDEX,
                       label_map=None, palette=None) -> None:
    """CamVid and Cityscapes fix their classes and label encoding: settings that would change
    them are refused rather than ignored."""
    if dataset == "folder":
        return
    given = [name for name, value in (("classes", classes), ("label_map", label_map), ("palette", palette))
             if value is not None]
    if ignore_index != IGNORE_INDEX:
        given.append("ignore_index")
    if given:
        raise ValueError(f"data.{given[0]} is only for data.dataset=folder ({dataset} defines its own "
                         f"classes and label values)")
