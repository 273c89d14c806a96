"""Loaders (CamVid, Cityscapes), bad input, and the labeled/partial/pseudo-labeled view."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets import (CAMVID_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_LABELS, EvalTransform,
                      SegmentationView, ViewItem, WeakAug, build_source, full_view)
from core.distributed import DistContext
from engine.data import StreamDataset, stream_loader
from tests.helpers import REPO, SHARED

REAL_CAMVID = SHARED / "data" / "camvid"
REPO_SPLITS = REPO / "splits" / "cityscapes"


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_gray(path: Path, lab: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), lab)


def make_camvid(root: Path, names=("b", "a", "c"), split="train", size=(20, 30), seed=0):
    """Tiny SegNet-layout tree; returns {stem: (rgb, raw label)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in names:
        rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        raw = rng.integers(0, 12, size=size, dtype=np.uint8)      # 0..10 classes, 11 void
        write_rgb(root / split / f"{name}.png", rgb)
        write_gray(root / f"{split}annot" / f"{name}.png", raw)
        written[name] = (rgb, raw)
    return written


# ---------------------------------------------------------------- CamVid
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
    write_gray(tmp_path / "valannot" / "x.png", np.full((16, 24), 3, np.uint8))
    listing = tmp_path / "lists" / "mine.txt"
    listing.parent.mkdir()
    listing.write_text("val/x.jpg valannot/x.png\n")
    src = build_source("camvid", tmp_path, str(listing))
    img, lab = src.read(0)
    assert src.ids == ["x"] and img.shape == (16, 24, 3)
    assert np.abs(img.astype(int) - rgb).max() <= 6          # JPEG is lossy, colour order kept
    assert (lab == 3).all()


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


# ---------------------------------------------------------------- Cityscapes
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
            write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            # A trainIds file that is NOT the mapping of the labelIds file, to see which is read.
            train_ids = rng.integers(0, 19, size=size, dtype=np.uint8)
            if with_train_ids:
                write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
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
    write_gray(tmp_path / "trainannot" / "c.png", np.zeros((21, 30), np.uint8))
    src = build_source("camvid", tmp_path, "train")
    with pytest.raises(ValueError, match=r"size mismatch.*c\.png"):
        src.read(src.ids.index("c"))


@pytest.mark.parametrize("bad", [12, 100, 254])
def test_camvid_label_out_of_range(tmp_path, bad):
    make_camvid(tmp_path)
    lab = np.zeros((20, 30), np.uint8)
    lab[3, 4] = bad
    write_gray(tmp_path / "trainannot" / "a.png", lab)
    src = build_source("camvid", tmp_path, "train")
    with pytest.raises(ValueError, match=rf"\[{bad}\].*trainannot[/\\]a\.png"):
        src.read(0)


def test_cityscapes_label_out_of_range(tmp_path):
    make_cityscapes(tmp_path, with_train_ids=True)
    bad = tmp_path / "gtFine/train/aachen/aachen_000000_000007_gtFine_labelTrainIds.png"
    write_gray(bad, np.full((64, 128), 19, np.uint8))
    src = build_source("cityscapes", tmp_path, "train")
    with pytest.raises(ValueError, match="aachen_000000_000007_gtFine_labelTrainIds"):
        src.read(src.ids.index("aachen_000000_000007"))
    bad_ids = tmp_path / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png"
    write_gray(bad_ids, np.full((64, 128), 40, np.uint8))
    (tmp_path / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelTrainIds.png").unlink()
    src = build_source("cityscapes", tmp_path, "train")
    with pytest.raises(ValueError, match=r"\[40\].*bremen_000000_000019_gtFine_labelIds"):
        src.read(src.ids.index("bremen_000000_000019"))


def test_colour_label_file_rejected(tmp_path):
    make_camvid(tmp_path)
    write_rgb(tmp_path / "trainannot" / "a.png", np.zeros((20, 30, 3), np.uint8))
    src = build_source("camvid", tmp_path, "train")
    with pytest.raises(ValueError, match="single-channel.*a.png"):
        src.read(0)


# ---------------------------------------------------------------- views
def naive_target(gt, pseudo, cells, region):
    """Pixel-by-pixel reference for the view's target rule."""
    h, w = gt.shape
    out = np.full((h, w), 255, np.uint8)
    for y in range(h):
        for x in range(w):
            if cells is not None and cells[y // region[0], x // region[1]]:
                out[y, x] = gt[y, x]
            elif pseudo is not None:
                out[y, x] = pseudo[y, x]
    return out


def test_view_partial_and_pseudo_targets(tmp_path):
    make_camvid(tmp_path, size=(20, 30))
    src = build_source("camvid", tmp_path, "train")
    region = (8, 7)                                          # uneven edges: 3x5 cells
    rng = np.random.default_rng(5)
    cells = rng.random((3, 5)) < 0.5
    pseudo = rng.integers(0, 11, size=(20, 30)).astype(np.uint8)
    pseudo[rng.random((20, 30)) < 0.3] = 255
    pseudo_path = tmp_path / "pseudo" / "b.png"
    write_gray(pseudo_path, pseudo)
    items = [ViewItem(0, cells, None), ViewItem(1, cells, str(pseudo_path)),
             ViewItem(2, None, str(pseudo_path)), ViewItem(0, "all", str(pseudo_path)),
             ViewItem(1, None)]
    view = SegmentationView(src, items, EvalTransform(), region_size=region)
    gts = [src.read(i)[1] for i in range(3)]
    expected = [naive_target(gts[0], None, cells, region),
                naive_target(gts[1], pseudo, cells, region),
                naive_target(gts[2], pseudo, None, region),
                gts[0], np.full((20, 30), 255, np.uint8)]
    for i, want in enumerate(expected):
        sample = view[i]
        np.testing.assert_array_equal(sample["label"].numpy(), want)
        assert sample["index"] == items[i].index and sample["id"] == src.ids[items[i].index]


def test_view_errors_name_the_file(tmp_path):
    make_camvid(tmp_path)
    src = build_source("camvid", tmp_path, "train")
    wrong = tmp_path / "pseudo_wrong.png"
    write_gray(wrong, np.zeros((10, 30), np.uint8))
    with pytest.raises(ValueError, match="pseudo_wrong.png"):
        SegmentationView(src, [ViewItem(0, None, str(wrong))], EvalTransform())[0]
    out_of_range = tmp_path / "pseudo_bad.png"
    write_gray(out_of_range, np.full((20, 30), 11, np.uint8))
    with pytest.raises(ValueError, match="pseudo_bad.png"):
        SegmentationView(src, [ViewItem(0, None, str(out_of_range))], EvalTransform())[0]
    with pytest.raises(ValueError, match="'a'"):          # 20x30 with 30x30 regions -> (1, 1)
        SegmentationView(src, [ViewItem(0, np.ones((2, 2), bool))], EvalTransform())[0]
    with pytest.raises(IndexError):
        SegmentationView(src, [ViewItem(3, "all")], EvalTransform())
    with pytest.raises(ValueError, match="revealed"):
        SegmentationView(src, [ViewItem(0, "some")], EvalTransform())


def test_view_sample_format_and_normalisation(tmp_path):
    written = make_camvid(tmp_path)
    src = build_source("camvid", tmp_path, "train")
    sample = full_view(src, EvalTransform())[0]
    assert set(sample) == {"image", "label", "id", "index"}
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 20, 30)
    assert sample["label"].dtype == torch.uint8 and sample["label"].shape == (20, 30)
    assert torch.equal(sample["image"], torch.tensor(written["a"][0]).permute(2, 0, 1))


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
