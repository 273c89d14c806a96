"""datasets/source.py and datasets/build.py: labels resized with nearest neighbour, and bad input
(a missing root, split file, listed file or label; an undecodable image; sizes that differ; a colour
label) named in the error."""
from __future__ import annotations

import numpy as np
import pytest

from datasets import build_source
from tests.helpers import make_camvid, write_png, write_rgb


# Sizes chosen so no output centre falls exactly on an input pixel edge (a tie that OpenCV's
# fixed-point arithmetic may break either way).
@pytest.mark.parametrize("resize", [(10, 15), (40, 60), (8, 12), (16, 22)])
def test_resize_uses_nearest_for_labels(tmp_path, resize):
    written = make_camvid(tmp_path, names=("a",))
    src = build_source("camvid", tmp_path, "train", resize=resize)
    img, lab = src.read(0)
    assert img.shape == (*resize, 3) and lab.shape == resize
    raw = np.where(written["a"][1] == 11, 255, written["a"][1])
    # Independent centre-aligned nearest neighbour: output pixel j samples the input pixel that
    # contains its centre, floor((j + 0.5) * in / out).
    rows = np.floor((np.arange(resize[0]) + 0.5) * raw.shape[0] / resize[0]).astype(int)
    cols = np.floor((np.arange(resize[1]) + 0.5) * raw.shape[1] / resize[1]).astype(int)
    np.testing.assert_array_equal(lab, raw[np.ix_(rows, cols)])


# ---------------------------------------------------------------- bad input
def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_source("camvid", tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_source("kitti", tmp_path, "train")


def test_missing_split_file_and_folder(tmp_path):
    make_camvid(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        build_source("camvid", tmp_path, str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="test"):
        build_source("camvid", tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        build_source("cityscapes", tmp_path, "train")


def test_split_line_pointing_to_missing_file(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "train.txt").write_text("train/a.png trainannot/a.png\ntrain/zz.png trainannot/zz.png\n")
    with pytest.raises(FileNotFoundError, match="zz.png"):
        build_source("camvid", tmp_path, "train")
    (tmp_path / "train.txt").write_text("train/a.png trainannot/a.png extra\n")
    with pytest.raises(ValueError, match="train.txt:1"):
        build_source("camvid", tmp_path, "train")


def test_image_without_label(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "trainannot" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        build_source("camvid", tmp_path, "train")


def test_corrupt_image(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "train" / "b.png").write_bytes(b"this is not a png at all" * 10)
    src = build_source("camvid", tmp_path, "train")          # indexing decodes nothing
    with pytest.raises(ValueError, match=r"train[/\\]b\.png"):
        src.read(src.ids.index("b"))


def test_size_mismatch(tmp_path):
    make_camvid(tmp_path)
    write_png(tmp_path / "trainannot" / "c.png", np.zeros((21, 30), np.uint8))
    src = build_source("camvid", tmp_path, "train")
    with pytest.raises(ValueError, match=r"size mismatch.*c\.png"):
        src.read(src.ids.index("c"))


def test_colour_label_file_rejected(tmp_path):
    make_camvid(tmp_path)
    write_rgb(tmp_path / "trainannot" / "a.png", np.zeros((20, 30, 3), np.uint8))
    src = build_source("camvid", tmp_path, "train")
    with pytest.raises(ValueError, match="single-channel.*a.png"):
        src.read(0)
