"""datasets/cityscapes.py: the label table against the official train-id list, labelIds and
labelTrainIds files (which one is read), split lists (the shipped ones too), labels out of range."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets import CITYSCAPES_CLASSES, CITYSCAPES_LABELS, build_source
from tests.helpers import REPO, write_png, write_rgb

REPO_SPLITS = REPO / "splits" / "cityscapes"


# The official train-id list, written out independently of datasets/classes.py.
OFFICIAL_TRAIN_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def test_cityscapes_table_matches_official_list():
    by_id = {lb.id: lb.train_id for lb in CITYSCAPES_LABELS}
    assert sorted(by_id) == list(range(34))
    for label_id in range(34):
        expected = OFFICIAL_TRAIN_IDS.index(label_id) if label_id in OFFICIAL_TRAIN_IDS else 255
        assert by_id[label_id] == expected, label_id
    assert CITYSCAPES_CLASSES == ("road", "sidewalk", "building", "wall", "fence", "pole",
                                  "traffic light", "traffic sign", "vegetation", "terrain", "sky",
                                  "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                                  "bicycle")


def expected_train_ids(label_ids: np.ndarray) -> np.ndarray:
    out = np.full(label_ids.shape, 255, np.uint8)
    for train_id, label_id in enumerate(OFFICIAL_TRAIN_IDS):
        out[label_ids == label_id] = train_id
    return out


def make_cityscapes(root: Path, with_train_ids: bool, split="train", size=(64, 128)):
    """Two cities, two frames each, official names; returns {image id: (rgb, labelIds, trainIds)}."""
    rng = np.random.default_rng(1)
    written = {}
    for city in ("aachen", "bremen"):
        for frame in (19, 7):
            stem = f"{city}_000000_{frame:06d}"
            rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            ids = rng.integers(0, 34, size=size, dtype=np.uint8)
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb)
            write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            # A trainIds file that is NOT the mapping of the labelIds file, to see which is read.
            train_ids = rng.integers(0, 19, size=size, dtype=np.uint8)
            if with_train_ids:
                write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
                           train_ids)
            written[stem] = (rgb, ids, train_ids)
    return written


def test_cityscapes_label_ids_only(tmp_path):
    written = make_cityscapes(tmp_path, with_train_ids=False)
    src = build_source("cityscapes", tmp_path, "train")
    assert src.num_classes == 19 and src.classes == CITYSCAPES_CLASSES
    assert src.ids == sorted(written)
    for i, image_id in enumerate(src.ids):
        img, lab = src.read(i)
        rgb, ids, _ = written[image_id]
        np.testing.assert_array_equal(img, rgb)
        np.testing.assert_array_equal(lab, expected_train_ids(ids))
        assert src.label_path(i).endswith("_gtFine_labelIds.png")


def test_cityscapes_prefers_train_ids_and_resizes(tmp_path):
    written = make_cityscapes(tmp_path, with_train_ids=True)
    src = build_source("cityscapes", tmp_path, "train")
    _, lab = src.read(0)
    np.testing.assert_array_equal(lab, written[src.ids[0]][2])
    small = build_source("cityscapes", tmp_path, "train", resize=(32, 32))
    img, lab = small.read(0)
    assert img.shape == (32, 32, 3) and lab.shape == (32, 32)
    assert set(np.unique(lab).tolist()) <= set(np.unique(written[src.ids[0]][2]).tolist())


def test_cityscapes_split_list_falls_back_to_label_ids(tmp_path):
    written = make_cityscapes(tmp_path, with_train_ids=False)
    listing = tmp_path / "labeled.txt"
    listing.write_text(
        "leftImg8bit/train/bremen/bremen_000000_000007_leftImg8bit.png "
        "gtFine/train/bremen/bremen_000000_000007_gtFine_labelTrainIds.png\n"
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png "
        "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png\n")
    src = build_source("cityscapes", tmp_path, str(listing))
    assert src.ids == ["bremen_000000_000007", "aachen_000000_000019"]
    np.testing.assert_array_equal(src.read(1)[1], expected_train_ids(written["aachen_000000_000019"][1]))


def test_repo_split_lists_parse():
    from datasets.source import read_list_file
    labeled = read_list_file(REPO_SPLITS / "1_16" / "labeled.txt")
    unlabeled = read_list_file(REPO_SPLITS / "1_16" / "unlabeled.txt")
    assert len(labeled) == 186 and len(labeled) + len(unlabeled) == 2975
    assert not {img for img, _ in labeled} & {img for img, _ in unlabeled}
    assert len(read_list_file(REPO_SPLITS / "val.txt")) == 500


def test_cityscapes_label_out_of_range(tmp_path):
    make_cityscapes(tmp_path, with_train_ids=True)
    bad = tmp_path / "gtFine/train/aachen/aachen_000000_000007_gtFine_labelTrainIds.png"
    write_png(bad, np.full((64, 128), 19, np.uint8))
    src = build_source("cityscapes", tmp_path, "train")
    with pytest.raises(ValueError, match="aachen_000000_000007_gtFine_labelTrainIds"):
        src.read(src.ids.index("aachen_000000_000007"))
    bad_ids = tmp_path / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png"
    write_png(bad_ids, np.full((64, 128), 40, np.uint8))
    (tmp_path / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelTrainIds.png").unlink()
    src = build_source("cityscapes", tmp_path, "train")
    with pytest.raises(ValueError, match=r"\[40\].*bremen_000000_000019_gtFine_labelIds"):
        src.read(src.ids.index("bremen_000000_000019"))
