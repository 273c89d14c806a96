"""The resized-image cache (datasets/cache.py): a cached read equals the source's bit for bit, a touched
source file makes its entry stale, a damaged entry is rebuilt, bad source files fail as without the
cache, images it would not shrink are read directly, and an unwritable folder names the setting."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

import datasets.source as source_module
from datasets import build_source
from tests.helpers import CITY_NATIVE, cache_entries

WORKING = (20, 30)  # the working size: the `city` fixture's 40x80 images shrink to it


def _sources(root, cache_dir, resize=WORKING):
    plain = build_source("cityscapes", root, "train", resize=resize)
    cached = build_source("cityscapes", root, "train", resize=resize)
    cached.use_cache(cache_dir)
    return plain, cached


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
    assert len(cache_entries(cache_dir / "20x30")) == 3
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
    assert _entry_state(cached, 1)[0] == "hit" and len(cache_entries(cache_dir)) == 1  # rebuilt in place


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
    cv2.imwrite(str(lab_path), np.full(CITY_NATIVE, 200, np.uint8))  # 200 is no Cityscapes labelId
    with pytest.raises(ValueError, match=f"out of range .* in {lab_path}"):
        cached.read(2)
    img_path.unlink()
    with pytest.raises(FileNotFoundError, match=f"image file not found: {img_path}"):
        cached.read(2)
    assert cache_entries(cache_dir) == []


@pytest.mark.parametrize("resize", [None, CITY_NATIVE, (60, 100)])
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
    assert png_size(str(paths[0][0])) == CITY_NATIVE and png_size(str(paths[0][1])) == CITY_NATIVE
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
