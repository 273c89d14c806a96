"""datasets/folder.py, your own data set (`data.dataset: folder`): layout, list files, label_map,
ignore_index, palette, bad files, 1-bit masks, and a pool whose unlabelled images have no label
file (a folder of images only, or image-only lines in a list file: query.oracle=human).
(The config keys: tests/core/test_config.py; a run on such a set: tests/e2e/test_folder_dataset.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import PALETTE, build_source
from datasets.classes import colorize
from tests.helpers import FOLDER_CLASSES, PHOTO_H, PHOTO_W, make_photos, write_png, write_rgb


# Raw label values of the "own" data: class c is stored as 10 * (c + 1); 99 is the ignore value.
RAW = {10: 0, 20: 1, 30: 2}


def make_folder(root: Path, names=("b", "a", "c"), split="train", size=(12, 16), seed=0,
                values=(10, 20, 30, 99)):
    """`<root>/<split>/images|labels` tree; returns {stem: (rgb, raw label)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in names:
        rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        raw = rng.choice(np.array(values, np.uint8), size=size)
        write_rgb(root / split / "images" / f"{name}.png", rgb)
        write_png(root / split / "labels" / f"{name}.png", raw)
        written[name] = (rgb, raw)
    return written


def folder(root, split="train", **kw):
    kw.setdefault("classes", FOLDER_CLASSES)
    return build_source("folder", root, split, **kw)


def naive_map(raw: np.ndarray, mapping: dict, ignore: int) -> np.ndarray:
    """Pixel-by-pixel reference: mapped value, 255 for the ignore value."""
    out = np.empty_like(raw)
    for idx, v in np.ndenumerate(raw):
        out[idx] = 255 if v == ignore else mapping[int(v)]
    return out


# ---------------------------------------------------------------- layout and list files
def test_folder_layout_pairs_images_with_labels_sorted_by_stem(tmp_path):
    written = make_folder(tmp_path, values=(0, 1, 2, 255))
    src = folder(tmp_path)
    assert src.ids == ["a", "b", "c"] and src.classes == tuple(FOLDER_CLASSES) and src.name == "folder"
    for i, name in enumerate(src.ids):
        img, lab = src.read(i)
        rgb, raw = written[name]
        np.testing.assert_array_equal(img, rgb)                    # RGB order, not BGR
        np.testing.assert_array_equal(lab, raw)                    # identity ids, 255 stays ignore
        assert Path(src.label_path(i)) == tmp_path / "train" / "labels" / f"{name}.png"


def test_list_file_given_or_found_beside_the_splits(tmp_path):
    written = make_folder(tmp_path, names=("x", "y"), values=(0, 1, 2))
    listing = tmp_path / "lists" / "mine.txt"
    listing.parent.mkdir()
    listing.write_text("train/images/y.png train/labels/y.png\n\ntrain/images/x.png train/labels/x.png\n")
    src = folder(tmp_path, str(listing))
    assert src.ids == ["y", "x"]                                   # list order; ids are stems
    np.testing.assert_array_equal(src.read(0)[0], written["y"][0])
    (tmp_path / "some.txt").write_text("train/images/x.png train/labels/x.png\n")
    assert folder(tmp_path, "some").ids == ["x"]                   # <root>/<split>.txt, as for CamVid


def test_label_map_and_ignore_index_against_a_pixel_loop(tmp_path):
    written = make_folder(tmp_path, values=(10, 20, 30, 99, 40))
    mapping = {**RAW, 40: 255}                                     # a second void value via the map
    src = folder(tmp_path, ignore_index=99, label_map=mapping)
    for i, name in enumerate(src.ids):
        np.testing.assert_array_equal(src.read(i)[1], naive_map(written[name][1], mapping, 99))


def test_custom_ignore_index_with_identity_ids_and_255_is_then_a_bad_value(tmp_path):
    written = make_folder(tmp_path, values=(0, 1, 2, 200))
    src = folder(tmp_path, ignore_index=200)
    np.testing.assert_array_equal(src.read(0)[1], naive_map(written["a"][1], {0: 0, 1: 1, 2: 2}, 200))
    lab = written["b"][1].copy()
    lab[0, 0] = 255                                                # not the ignore value here
    write_png(tmp_path / "train" / "labels" / "b.png", lab)
    with pytest.raises(ValueError, match=r"\[255\].*labels[/\\]b\.png"):
        src.read(1)


def test_palette_given_default_and_used_by_colorize(tmp_path):
    make_folder(tmp_path, values=(0, 1, 2))
    palette = [[1, 2, 3], [40, 50, 60], [250, 0, 7]]
    src = folder(tmp_path, palette=palette)
    assert src.palette.dtype == np.uint8 and src.palette.tolist() == palette
    np.testing.assert_array_equal(folder(tmp_path).palette, PALETTE[:3])
    label = np.array([[0, 2], [255, 1]], np.uint8)
    expected = np.array([[[1, 2, 3], [250, 0, 7]], [[0, 0, 0], [40, 50, 60]]], np.uint8)
    np.testing.assert_array_equal(colorize(label, src.palette), expected)
    np.testing.assert_array_equal(colorize(label), PALETTE[[[0, 2], [0, 1]]] * (label != 255)[..., None])
    with pytest.raises(ValueError, match="palette must be 3"):
        folder(tmp_path, palette=palette[:2])


# ---------------------------------------------------------------- bad input
def test_value_outside_the_map_names_the_file_and_value(tmp_path):
    written = make_folder(tmp_path, values=(10, 20, 30, 99))
    lab = written["c"][1].copy()
    lab[2, 3] = 21
    write_png(tmp_path / "train" / "labels" / "c.png", lab)
    src = folder(tmp_path, ignore_index=99, label_map=RAW)
    src.read(0)
    with pytest.raises(ValueError, match=r"\[21\] out of range.*labels[/\\]c\.png"):
        src.read(2)


def test_size_mismatch_and_missing_label_name_the_files(tmp_path):
    make_folder(tmp_path, values=(0, 1))
    write_png(tmp_path / "train" / "labels" / "b.png", np.zeros((13, 16), np.uint8))
    with pytest.raises(ValueError, match=r"size mismatch: .*images[/\\]b\.png is 12x16, .*b\.png is 13x16"):
        folder(tmp_path).read(1)
    (tmp_path / "train" / "labels" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no label for image .*c\.png: expected .*labels[/\\]c\.png"):
        folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"val[/\\]images"):
        folder(tmp_path, "val")


@pytest.mark.parametrize("kwargs, message", [
    ({"classes": None}, "needs data.classes"),
    ({"classes": ["a", "b", "a"]}, r"duplicate class names \['a'\]"),
    ({"classes": ["only"]}, "need 2..255"),
    ({"ignore_index": 1}, "ignore_index 1 is also a class value"),
    ({"label_map": {10: 0, 20: 3}}, "20 -> 3: class id must be in 0..2"),
    ({"label_map": {300: 0}}, "300 is outside 0..255"),
    ({"label_map": {10: 0}, "ignore_index": 10}, "ignore_index 10 is also a class value"),
])
def test_bad_class_settings_are_refused(tmp_path, kwargs, message):
    make_folder(tmp_path, values=(0, 1))
    with pytest.raises(ValueError, match=message):
        folder(tmp_path, **kwargs)


def test_fixed_datasets_refuse_folder_settings(tmp_path):
    with pytest.raises(ValueError, match="data.classes is only for data.dataset=folder"):
        build_source("camvid", tmp_path, "train", classes=FOLDER_CLASSES)
    with pytest.raises(ValueError, match="data.ignore_index is only for data.dataset=folder"):
        build_source("cityscapes", tmp_path, "train", ignore_index=0)


@pytest.mark.slow
def test_a_one_bit_label_trains_as_class_one_in_a_folder_data_set(tmp_path):
    """The folder data set reads a 1-bit mask (how Image.fromarray(mask.astype(bool)) saves it)
    as classes 0 and 1, not 0 and 255 (= ignored)."""
    from datasets import build_source
    for split in ("train",):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir(parents=True)
    mask = np.zeros((8, 8), bool)
    mask[:, 4:] = True
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "train" / "labels" / "a.png")
    src = build_source("folder", tmp_path, "train", classes=["bg", "fg"])
    np.testing.assert_array_equal(src.read(0)[1], mask.astype(np.uint8))


# ---------------------------------------------------------------- a pool a person labels
def test_an_unlabelled_image_is_an_error_unless_the_pool_may_hold_them(tmp_path):
    make_photos(tmp_path)
    with pytest.raises(FileNotFoundError, match="no label for image .*p2.png"):
        folder(tmp_path)
    src = folder(tmp_path, unlabeled_ok=True)
    assert src.ids == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert [src.has_label(i) for i in range(6)] == [True, True, False, False, False, False]
    image, label = src.read(3)
    assert image.shape == (PHOTO_H, PHOTO_W, 3) and label.shape == (PHOTO_H, PHOTO_W)
    assert (label == 255).all()  # all void
    assert (src.read(0)[1] != 255).any()


def test_image_only_list_lines_are_for_a_pool_a_person_labels(tmp_path):
    make_photos(tmp_path)
    listing = tmp_path / "lists" / "pool.txt"
    listing.write_text("train/images/p0.png train/labels/p0.png\ntrain/images/p2.png\n")
    with pytest.raises(ValueError, match=r"pool.txt:2: expected 'image label'.*query.oracle=human"):
        folder(tmp_path, str(listing))
    src = folder(tmp_path, str(listing), unlabeled_ok=True)
    assert src.ids == ["p0", "p2"] and [src.has_label(0), src.has_label(1)] == [True, False]


def test_a_folder_of_photos_without_any_label_folder(tmp_path):
    make_photos(tmp_path, labelled=())
    assert not (tmp_path / "train" / "labels").exists()
    src = folder(tmp_path, unlabeled_ok=True)
    assert src.ids == ["p2", "p3", "p4", "p5"] and not any(src.has_label(i) for i in range(len(src)))
