"""Datasets: sources (CamVid, Cityscapes, synthetic street scenes, your own folder), training
views with partial / pseudo labels, and joint image+label transforms.

    src = build_source("camvid", "data/camvid", "train", resize=None)
    view = SegmentationView(src, [ViewItem(i, "all") for i in range(len(src))], WeakAug((360, 480)))
"""
from .build import DATASETS, build_source, dataset_classes, dataset_palette
from .classes import (CAMVID_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_LABELS, IGNORE_INDEX, PALETTE)
from .folder import build_folder
from .source import SegmentationSource, SourceEntry
from .synthetic import generate_synthetic
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, EvalTransform, StrongAug, WeakAug,
                         image_to_hwc, normalize_images, to_tensors)
from .view import SegmentationView, ViewItem, expand_cells, full_view

__all__ = [
    "DATASETS", "build_source", "dataset_classes", "dataset_palette", "build_folder",
    "CAMVID_CLASSES", "CITYSCAPES_CLASSES", "CITYSCAPES_LABELS", "IGNORE_INDEX", "PALETTE",
    "SegmentationSource", "SourceEntry", "generate_synthetic", "IMAGENET_MEAN",
    "IMAGENET_STD", "EvalTransform", "StrongAug", "WeakAug", "image_to_hwc", "normalize_images",
    "to_tensors",
    "SegmentationView", "ViewItem", "expand_cells", "full_view",
]
