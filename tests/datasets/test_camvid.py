"""datasets/camvid.py: the SegNet layout's folder pairing (RGB order, void mapped to 255), list files
(list order, SegNet's absolute paths, a list given by path, JPEG images), labels out of range, and
the real CamVid copy where the machine has one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets import CAMVID_CLASSES, build_source
from tests.helpers import SHARED, make_camvid, write_png, write_rgb

REAL_CAMVID = SHARED / "data" / "camvid"


def test_camvid_folder_pairing_reads_rgb_and_maps_void(tmp_path):
    written = make_camvid(tmp_path)
    src = build_source("camvid", tmp_path, "train")
    assert src.classes == CAMVID_CLASSES and src.num_classes == 11
    assert src.ids == ["a", "b", "c"]                       # sorted without a list file
    for i, name in enumerate(src.ids):
        img, lab = src.read(i)
        rgb, raw = written[name]
        assert img.dtype == np.uint8 and lab.dtype == np.uint8
        np.testing.assert_array_equal(img, rgb)             # RGB order, not BGR
        np.testing.assert_array_equal(lab, np.where(raw == 11, 255, raw))
        assert src.image_path(i).endswith(f"train/{name}.png")
        assert src.label_path(i).endswith(f"trainannot/{name}.png")


def test_camvid_list_file_order_and_segnet_absolute_paths(tmp_path):
    written = make_camvid(tmp_path)
    (tmp_path / "train.txt").write_text(
        "/SegNet/CamVid/train/c.png /SegNet/CamVid/trainannot/c.png\n"
        "train/a.png trainannot/a.png\n\n")
    src = build_source("camvid", tmp_path, "train")
    assert src.ids == ["c", "a"]                            # list order, blank line skipped
    np.testing.assert_array_equal(src.read(0)[0], written["c"][0])
    assert Path(src.image_path(0)) == tmp_path / "train" / "c.png"


def test_camvid_split_given_as_list_path_and_jpg(tmp_path):
    rgb = np.full((16, 24, 3), (200, 40, 90), np.uint8)
    write_rgb(tmp_path / "val" / "x.jpg", rgb)
    write_png(tmp_path / "valannot" / "x.png", np.full((16, 24), 3, np.uint8))
    listing = tmp_path / "lists" / "mine.txt"
    listing.parent.mkdir()
    listing.write_text("val/x.jpg valannot/x.png\n")
    src = build_source("camvid", tmp_path, str(listing))
    img, lab = src.read(0)
    assert src.ids == ["x"] and img.shape == (16, 24, 3)
    assert np.abs(img.astype(int) - rgb).max() <= 6          # JPEG is lossy, colour order kept
    assert (lab == 3).all()


@pytest.mark.parametrize("bad", [12, 100, 254])
def test_camvid_label_out_of_range(tmp_path, bad):
    make_camvid(tmp_path)
    lab = np.zeros((20, 30), np.uint8)
    lab[3, 4] = bad
    write_png(tmp_path / "trainannot" / "a.png", lab)
    src = build_source("camvid", tmp_path, "train")
    with pytest.raises(ValueError, match=rf"\[{bad}\].*trainannot[/\\]a\.png"):
        src.read(0)


@pytest.mark.skipif(not REAL_CAMVID.exists(), reason="shared CamVid copy not present")
def test_real_camvid():
    train = build_source("camvid", REAL_CAMVID, "train")
    val = build_source("camvid", REAL_CAMVID, "val")
    assert (len(train), len(val)) == (367, 101)
    assert len(set(train.ids)) == 367 and not set(train.ids) & set(val.ids)
    for src in (train, val):
        for i in (0, len(src) - 1):
            img, lab = src.read(i)
            assert img.shape == (360, 480, 3) and lab.shape == (360, 480)
            values = set(np.unique(lab).tolist())
            assert values <= set(range(11)) | {255} and len(values) > 3
    img, lab = build_source("camvid", REAL_CAMVID, "val", resize=(180, 240)).read(0)
    assert img.shape == (180, 240, 3) and lab.shape == (180, 240)
