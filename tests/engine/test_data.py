"""engine/data.py: the stream sampler (ranks disjoint, each epoch a permutation, an exact resume),
per-position seeding of the stream, loader workers that equal one process, batches grouped by image
size, and the source that engine.data builds using data.cache_dir (filled by engine/scan.py)."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from core.config import load_config
from core.distributed import DistContext
from datasets import SegmentationView, ViewItem, WeakAug, build_source, full_view
from engine.data import StreamDataset, StreamSampler, collate_by_size, stream_loader
from engine.scan import scan_source
from tests.helpers import cache_entries, make_camvid


def _stream(length, batch, seed, start, end, rank, world):
    ctx = DistContext(rank=rank, world_size=world)
    return list(StreamSampler(length, batch, seed, start, end, ctx))


def test_stream_ranks_are_disjoint_and_cover_each_epoch():
    a = _stream(10, 2, 3, 0, 5, 0, 2)
    b = _stream(10, 2, 3, 0, 5, 1, 2)
    positions = sorted(p for _, p in a + b)
    assert positions == list(range(20))          # every position once, none shared
    by_pos = dict((p, i) for i, p in a + b)
    assert sorted(by_pos[p] for p in range(10)) == list(range(10))      # epoch 0 is a permutation
    assert sorted(by_pos[p] for p in range(10, 20)) == list(range(10))  # epoch 1 too
    assert [by_pos[p] for p in range(10)] != [by_pos[p] for p in range(10, 20)]  # reshuffled


def test_stream_resumes_exactly_where_it_stopped():
    full = _stream(7, 3, 1, 0, 10, 0, 1)
    assert _stream(7, 3, 1, 0, 4, 0, 1) + _stream(7, 3, 1, 4, 10, 0, 1) == full


def test_stream_seeding_is_per_position_and_reproducible(tmp_path):
    make_camvid(tmp_path)
    src = build_source("camvid", tmp_path, "train")
    aug = WeakAug((16, 16), scale_range=(0.5, 1.5))
    # View positions differ from source indices, so the seeding rule can be told apart.
    view = SegmentationView(src, [ViewItem(2, "all"), ViewItem(0, "all"), ViewItem(1, "all")], aug)
    stream = StreamDataset(view, seed=3)
    first = [stream[(i, 10 + i)]["image"] for i in range(3)]
    again = [stream[(i, 10 + i)]["image"] for i in (2, 0, 1)]  # order of access does not matter
    for a, b in zip(first, [again[1], again[2], again[0]]):
        assert torch.equal(a, b)
    img, lab = src.read(0)     # documented rule: stream position pos uses rng([seed, 7, pos])
    manual, _ = aug(img, lab, np.random.default_rng([3, 7, 11]))
    assert torch.equal(first[1], manual)
    assert torch.equal(view.sample(1, np.random.default_rng([3, 7, 11]))["image"], manual)
    assert not torch.equal(StreamDataset(view, seed=4)[(1, 11)]["image"], first[1])
    assert not torch.equal(stream[(1, 12)]["image"], first[1])  # another position, another draw


def test_dataloader_workers_match_single_process(tmp_path):
    make_camvid(tmp_path, names=tuple("abcdef"))
    view = full_view(build_source("camvid", tmp_path, "train"), WeakAug((16, 16)))

    def batches(workers):
        loader = stream_loader(view, 2, seed=11, start_step=0, end_step=3, ctx=DistContext(), workers=workers)
        return [(b["image"], b["label"], b["id"]) for b in loader]

    single, parallel = batches(0), batches(2)
    assert len(single) == len(parallel) == 3
    for (i0, l0, n0), (i2, l2, n2) in zip(single, parallel):
        assert torch.equal(i0, i2) and torch.equal(l0, l2) and n0 == n2


def test_collate_by_size_groups_images_of_equal_size_in_order():
    def sample(h, w, index):
        return {"image": torch.full((3, h, w), index, dtype=torch.uint8),
                "label": torch.zeros((h, w), dtype=torch.uint8), "id": f"i{index}", "index": index}

    groups = collate_by_size([sample(4, 6, 0), sample(5, 6, 1), sample(4, 6, 2), sample(4, 5, 3)])
    assert [g["index"].tolist() for g in groups] == [[0, 2], [1], [3]]
    assert [tuple(g["image"].shape) for g in groups] == [(2, 3, 4, 6), (1, 3, 5, 6), (1, 3, 4, 5)]
    assert groups[0]["image"][1].max().item() == 2 and groups[0]["id"] == ["i0", "i2"]


def test_engine_source_uses_data_cache_dir_and_the_scan_fills_it(city, tmp_path):
    root, _, cache_dir = city
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"data: {{dataset: cityscapes, root: {root}, resize: [20, 30], "
                        f"cache_dir: {cache_dir}, workers: 0}}\nstages: {{}}\n")
    from engine.data import source
    src = source(load_config(str(cfg_path)), "train")
    assert src.cache is not None and src.cache.folder == cache_dir / "20x30"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan_source(src, None, DistContext(), workers=0)
    assert len(cache_entries(cache_dir)) == len(src)
    off = source(load_config(str(cfg_path), ["data.cache_dir=null"]), "train")
    assert off.cache is None
