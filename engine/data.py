"""Data sources, views and loaders built from a config.

Training batches come from a *stream*: the concatenation of per-epoch permutations of a view
(epoch e's order is seeded by (seed, e), like DistributedSampler.set_epoch), cut into steps of
`batch x world_size` positions, each rank taking its own slice. Sample augmentations are drawn
from an rng seeded by (seed, stream position). So the batches of step s are a pure function
of (seed, s): a resumed run sees exactly the data an uninterrupted one would have seen, in
any number of loader workers.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from datasets import EvalTransform, SegmentationSource, StrongAug, WeakAug, build_source
from datasets.synthetic import generate_synthetic
from core.distributed import DistContext
from core.errors import MissingInput


def prepare_data_root(cfg) -> None:
    """The synthetic set is generated on first use (deterministic, atomic); real data must exist."""
    if cfg.data.dataset == "synthetic":
        s = cfg.data.synthetic
        generate_synthetic(cfg.data.root, num_train=s.num_train, num_val=s.num_val, num_test=s.num_test,
                           height=s.height, width=s.width, seed=s.seed)
    elif not Path(cfg.data.root).is_dir():
        raise MissingInput(f"data.root: dataset folder not found: {cfg.data.root}")


def source(cfg, split: str, unlabeled_ok: bool = False) -> SegmentationSource:
    """A split of the config's data set. `unlabeled_ok`: images without a label file are allowed
    (only the training pool of a query.oracle=human run asks for it)."""
    d = cfg.data
    kind = "camvid" if d.dataset == "synthetic" else d.dataset
    src = build_source(kind, d.root, split, resize=d.resize, classes=d.classes, ignore_index=d.ignore_index,
                       label_map=d.label_map, palette=d.palette, unlabeled_ok=unlabeled_ok)
    src.use_cache(d.cache_dir)  # resized pairs kept in data.cache_dir (only when data.resize is set)
    return src


def weak_aug(cfg) -> WeakAug:
    return WeakAug(crop_size=tuple(cfg.data.crop_size), scale_range=tuple(cfg.data.scale_range))


def strong_aug(cfg) -> StrongAug:
    a = cfg.aug
    return StrongAug(crop_size=tuple(cfg.data.crop_size), scale_range=tuple(cfg.data.scale_range),
                     blur_p=a.blur_p, jitter=tuple(a.jitter), jitter_p=a.jitter_p,
                     grayscale_p=a.grayscale_p, cutout_p=a.cutout_p, cutout_frac=tuple(a.cutout_frac))


class StreamSampler(Sampler):
    """Yields (view index, stream position) for steps [start_step, end_step) of this rank."""

    def __init__(self, length: int, batch: int, seed: int, start_step: int, end_step: int,
                 ctx: DistContext):
        if length < 1:
            raise ValueError("cannot draw training batches from an empty set of images")
        self.length, self.batch, self.seed = length, batch, seed
        self.start_step, self.end_step, self.ctx = start_step, end_step, ctx

    def position_range(self, step: int) -> range:
        per_step = self.batch * self.ctx.world_size
        first = step * per_step + self.ctx.rank * self.batch
        return range(first, first + self.batch)

    def __iter__(self):
        cached_epoch, order = -1, None
        for step in range(self.start_step, self.end_step):
            for pos in self.position_range(step):
                epoch = pos // self.length
                if epoch != cached_epoch:
                    order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
                    cached_epoch = epoch
                yield int(order[pos % self.length]), pos

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.batch


class StreamDataset(Dataset):
    """Wraps a SegmentationView so that augmentation randomness follows the stream position."""

    def __init__(self, view, seed: int):
        self.view, self.seed = view, seed

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, key):
        i, pos = key
        return self.view.sample(i, np.random.default_rng([self.seed, 7, pos]))


# OpenCV single-threaded in this process and so in every forked loader worker: workers then
# do not fight the model for the cores, and — the reason it happens here, at import — a worker
# forked while OpenCV's thread pool is busy in the parent cannot deadlock on that pool (seen:
# a worker hanging in cv2.setNumThreads after the parent drew query panels).
cv2.setNumThreads(1)


def stream_loader(view, batch: int, seed: int, start_step: int, end_step: int, ctx: DistContext,
                  workers: int) -> DataLoader:
    sampler = StreamSampler(len(view), batch, seed, start_step, end_step, ctx)
    return DataLoader(StreamDataset(view, seed), batch_size=batch, sampler=sampler, num_workers=workers,
                      pin_memory=ctx.device.type == "cuda",
                      persistent_workers=False, prefetch_factor=4 if workers else None)


def ordered_loader(dataset: Dataset, indices: list[int], batch: int, ctx: DistContext,
                   workers: int) -> DataLoader:
    """Deterministic, unshuffled pass over `indices` (this rank's shard: the caller shards).
    Each batch is a list of sub-batches of equal image size (see `collate_by_size`); uint8
    tensors, pinned on CUDA so the copy to the device can be `non_blocking`."""
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(subset, batch_size=batch, shuffle=False, num_workers=workers,
                      collate_fn=collate_by_size, pin_memory=ctx.device.type == "cuda")


def collate_by_size(samples: list[dict]) -> list[dict]:
    """Samples -> one collated batch per distinct image size, in order of first appearance.
    Datasets at native size (data.resize null) may mix sizes; those images cannot share a
    tensor, so they are predicted in separate groups rather than refused."""
    groups: dict[tuple, list[dict]] = {}
    for sample in samples:
        groups.setdefault(tuple(sample["image"].shape), []).append(sample)
    return [default_collate(group) for group in groups.values()]


def eval_transform() -> EvalTransform:
    return EvalTransform()
