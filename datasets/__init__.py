"""Datasets: sources (CamVid, Cityscapes, synthetic street scenes), training views with
partial / pseudo labels, and joint image+label transforms.

    src = build_source("camvid", "data/camvid", "train", resize=None)
    view = SegmentationView(src, [ViewItem(i, "all") for i in range(len(src))], WeakAug((360, 480)))
"""
from .build import DATASETS, build_source
from .classes import (CAMVID_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_LABELS, IGNORE_INDEX)
from .source import SegmentationSource, SourceEntry
from .synthetic import generate_synthetic
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, EvalTransform, StrongAug, WeakAug,
                         denormalize, to_tensors)
from .view import SegmentationView, ViewItem, expand_cells, full_view

__all__ = [
    "DATASETS", "build_source", "CAMVID_CLASSES", "CITYSCAPES_CLASSES", "CITYSCAPES_LABELS",
    "IGNORE_INDEX", "SegmentationSource", "SourceEntry", "generate_synthetic", "IMAGENET_MEAN",
    "IMAGENET_STD", "EvalTransform", "StrongAug", "WeakAug", "denormalize", "to_tensors",
    "SegmentationView", "ViewItem", "expand_cells", "full_view",
]
