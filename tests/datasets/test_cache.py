"""The resized-image cache (datasets/cache.py) and the data-loader worker count (data.workers)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

import datasets.source as source_module
from datasets import build_source
from core.config import ConfigError, auto_workers, load_config
from core.distributed import DistContext
from engine.scan import scan_source

# Cityscapes labelIds -> train ids: road 7 -> 0, sidewalk 8 -> 1, building 11 -> 2, car 26 -> 13,
# unlabeled 0 -> 255. A cache that stored raw values would hand out 7/8/11/26.
LABEL_IDS = np.array([0, 7, 8, 11, 26], dtype=np.uint8)
NATIVE, WORKING = (40, 80), (20, 30)


def _write_pair(root: Path, stem: str, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    h, w = NATIVE
    image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
    label = LABEL_IDS[rng.integers(0, len(LABEL_IDS), (h // 4, w // 4))].repeat(4, 0).repeat(4, 1)
    img_path = root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png"
    lab_path = root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(img_path), image)
    cv2.imwrite(str(lab_path), label)
    return img_path, lab_path


@pytest.fixture
def city(tmp_path):
    root = tmp_path / "cityscapes"
    paths = [_write_pair(root, f"aachen_{i:06d}_000019", i) for i in range(3)]
    return root, paths, tmp_path / "cache"


def _sources(root, cache_dir, resize=WORKING):
    plain = build_source("cityscapes", root, "train", resize=resize)
    cached = build_source("cityscapes", root, "train", resize=resize)
    cached.use_cache(cache_dir)
    return plain, cached


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.npz"))


def _entry_state(src, i):
    cache, e = src.cache, src._entries[i]
    path = cache.entry_path(e.image_path, e.label_path, e.label_lut)
    return cache.lookup(path, cache.key(e.image_path, e.label_path, e.label_lut))[1], path


def test_cached_read_equals_the_source_read_bit_for_bit(city, monkeypatch):
    root, _, cache_dir = city
    plain, cached = _sources(root, cache_dir)
    expected = [plain.read(i) for i in range(len(plain))]
    assert set(np.unique(expected[0][1])) <= {0, 1, 2, 13, 255}  # train ids, not labelIds
    for i, (img, lab) in enumerate(expected):  # first read builds the entry
        got_img, got_lab = cached.read(i)
        assert got_img.dtype == np.uint8 and got_lab.dtype == np.uint8
        assert np.array_equal(got_img, img) and np.array_equal(got_lab, lab)
    assert len(_entries(cache_dir / "20x30")) == 3
    # Second reads come from the cache alone: the PNG readers are not called.
    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache holds it")
    monkeypatch.setattr(source_module, "read_rgb", no_decoding)
    monkeypatch.setattr(source_module, "read_label_png", no_decoding)
    for i, (img, lab) in enumerate(expected):
        got_img, got_lab = cached.read(i)
        assert np.array_equal(got_img, img) and np.array_equal(got_lab, lab)
        assert got_img.flags.writeable and got_lab.flags.writeable  # like a decoded pair


def test_touching_a_source_file_makes_its_entry_stale(city):
    root, paths, cache_dir = city
    plain, cached = _sources(root, cache_dir)
    cached.read(1)
    assert _entry_state(cached, 1)[0] == "hit"
    img_path, lab_path = paths[1]
    st = os.stat(lab_path)
    os.utime(lab_path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched only
    assert _entry_state(cached, 1)[0] == "stale"
    # New content of the same size: the next read rebuilds the entry from it.
    label = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(lab_path), np.where(label == 7, 26, label).astype(np.uint8))
    os.utime(lab_path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    img, lab = cached.read(1)
    assert np.array_equal(lab, plain.read(1)[1]) and np.array_equal(img, plain.read(1)[0])
    assert (lab != 0).all()  # no road left: it became car (13)
    assert _entry_state(cached, 1)[0] == "hit" and len(_entries(cache_dir)) == 1  # rebuilt in place


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_a_corrupt_entry_is_rebuilt_not_used(city, damage):
    root, _, cache_dir = city
    plain, cached = _sources(root, cache_dir)
    cached.read(0)
    state, path = _entry_state(cached, 0)
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        middle = data.index(b"label.npy") // 2  # inside the stored image array
        data[middle] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    assert _entry_state(cached, 0)[0].startswith("corrupt")
    with pytest.warns(UserWarning, match="rebuilding"):
        img, lab = cached.read(0)
    assert np.array_equal(img, plain.read(0)[0]) and np.array_equal(lab, plain.read(0)[1])
    assert _entry_state(cached, 0)[0] == "hit"


def test_bad_source_files_fail_as_without_cache_and_write_nothing(city):
    root, paths, cache_dir = city
    _, cached = _sources(root, cache_dir)
    img_path, lab_path = paths[2]
    cv2.imwrite(str(lab_path), np.full(NATIVE, 200, np.uint8))  # 200 is no Cityscapes labelId
    with pytest.raises(ValueError, match=f"out of range .* in {lab_path}"):
        cached.read(2)
    img_path.unlink()
    with pytest.raises(FileNotFoundError, match=f"image file not found: {img_path}"):
        cached.read(2)
    assert _entries(cache_dir) == []


@pytest.mark.parametrize("resize", [None, NATIVE, (60, 100)])
def test_images_the_working_size_does_not_shrink_are_read_directly(city, resize):
    root, _, cache_dir = city
    plain, cached = _sources(root, cache_dir, resize=resize)
    assert (cached.cache is None) == (resize is None)
    for i in range(len(cached)):
        assert all(np.array_equal(a, b) for a, b in zip(cached.read(i), plain.read(i)))
    assert not cache_dir.exists()


def test_png_size_reads_the_header_only(city, tmp_path):
    from datasets.cache import png_size
    _, paths, _ = city
    assert png_size(str(paths[0][0])) == NATIVE and png_size(str(paths[0][1])) == NATIVE
    jpg = tmp_path / "x.jpg"
    cv2.imwrite(str(jpg), np.zeros((8, 8, 3), np.uint8))
    assert png_size(str(jpg)) is None


def test_an_unwritable_cache_folder_names_the_setting(city):
    root, _, cache_dir = city
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    cache_dir.write_text("a file where the cache folder should be")
    _, cached = _sources(root, cache_dir)
    with pytest.raises(OSError, match="data.cache_dir"):
        cached.read(0)


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
    assert len(_entries(cache_dir)) == len(src)
    off = source(load_config(str(cfg_path), ["data.cache_dir=null"]), "train")
    assert off.cache is None


# --------------------------------------------------------------------------- data.workers
def test_auto_workers_share_the_cores_among_the_ranks_of_a_node(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr("core.config._cgroup_cpu_quota", lambda: None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_workers() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_workers() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert auto_workers() == 1  # never 0: that would mean "load in the main process"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr("core.config._cgroup_cpu_quota", lambda: 6)  # a container's CPU quota
    assert auto_workers() == 3


def test_cgroup_quota_file_is_read(tmp_path):
    from core.config import _cgroup_cpu_quota
    f = tmp_path / "cpu.max"
    f.write_text("250000 100000\n")
    assert _cgroup_cpu_quota(str(f)) == 2
    f.write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(f)) is None
    assert _cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_data_workers_null_resolves_and_explicit_values_stay(tmp_path, monkeypatch):
    monkeypatch.setattr("core.config.auto_workers", lambda: 7)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("data: {dataset: camvid, root: x}\nstages: {}\n")
    assert load_config(str(cfg_path)).data.workers == 7
    assert load_config(str(cfg_path), ["data.workers=0"]).data.workers == 0
    assert load_config(str(cfg_path), ["data.workers=3"]).data.workers == 3
    with pytest.raises(ConfigError, match="data.workers"):
        load_config(str(cfg_path), ["data.workers=-1"])
