"""`build_source`: the one entry point the engine uses to open a dataset split."""
from __future__ import annotations

import os
from pathlib import Path

from .camvid import build_camvid
from .cityscapes import build_cityscapes
from .source import SegmentationSource

DATASETS = ("camvid", "cityscapes", "synthetic")


def build_source(dataset: str, root: str | os.PathLike, split: str,
                 resize=None) -> SegmentationSource:
    """Index one split and check that each of its files exists (no image is decoded here).

    dataset: "camvid" | "cityscapes" | "synthetic" (synthetic = a generated set in CamVid's
    layout; build_source only reads it, `generate_synthetic` must have written it first).
    split: a split name ("train", "val", "test") or a path to a list file of `image label` lines
    relative to `root`. resize: None (native size) or (h, w).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    root = Path(root)
    if not root.is_dir():
        hint = " (run generate_synthetic first)" if dataset == "synthetic" else ""
        raise FileNotFoundError(f"{dataset} dataset root not found: {root}{hint}")
    if dataset == "cityscapes":
        source = build_cityscapes(root, split, resize=resize)
    else:
        source = build_camvid(root, split, resize=resize, name=dataset)
    source.check_files()
    return source
