"""al/oracle.py, what the queries see and reveal: which image goes to which training view with which
labels (the data set's, revealed ground truth, pseudo, a person's), the class pixels a query
reveals, and each image's newest human labels (copied along when a stage is reused). Expectations
are worked out by hand on tiny hand-made pools."""
import numpy as np
import pytest

from al.oracle import class_pixels, view_items
from al.pseudo import pseudo_label_file
from core.distributed import DistContext
from datasets import SegmentationView, ViewItem, build_source
from query.pool import LabelPool, RegionGrid
from tests.helpers import write_png

T, F = True, False


# ---------------------------------------------------------------- a 5-image pool of 4x4 images, 2x2 cells
# GT of image k is the constant class k+1 (image 2 has one void pixel at (2, 0)); pseudo labels of
# images 1..3 are the constants 7, 8, 9 with pixel (3, 3) not confident (255); human labels: image 3
# has 10 (bicyclist) in its right column of cells, image 4 has 0 (sky) everywhere.
CELLS = np.array([[[T, T], [T, T]],    # 0: fully labeled from the start (dataset labels)
                  [[T, F], [F, F]],    # 1: one revealed cell (ground truth)
                  [[F, F], [F, F]],    # 2: nothing revealed
                  [[F, T], [F, T]],    # 3: right column revealed by a human
                  [[T, T], [T, T]]])   # 4: every cell revealed by a human


@pytest.fixture
def tiny(tmp_path):
    for k in range(5):
        write_png(tmp_path / "data" / "train" / f"i{k}.png", np.full((4, 4, 3), 40 * k, np.uint8))
        label = np.full((4, 4), k + 1, np.uint8)
        if k == 2:
            label[2, 0] = 11  # CamVid's raw void
        write_png(tmp_path / "data" / "trainannot" / f"i{k}.png", label)
    src = build_source("camvid", tmp_path / "data", "train")
    pseudo_dir = tmp_path / "pseudo"
    for k, value in ((1, 7), (2, 8), (3, 9)):
        pseudo = np.full((4, 4), value, np.uint8)
        pseudo[3, 3] = 255
        write_png(pseudo_label_file(pseudo_dir, f"i{k}"), pseudo)
    human3 = np.full((4, 4), 255, np.uint8)
    human3[:, 2:] = 10
    write_png(tmp_path / "human" / "i3.png", human3)
    write_png(tmp_path / "human" / "i4.png", np.zeros((4, 4), np.uint8))
    human = {3: str(tmp_path / "human" / "i3.png"), 4: str(tmp_path / "human" / "i4.png")}
    pool = LabelPool(src.ids, RegionGrid(4, 4, (2, 2)), CELLS)
    return src, pool, pseudo_dir, human


def _targets(src, items):
    view = SegmentationView(src, items, transform=None, region_size=(2, 2))
    return {src.ids[item.index]: view.load(j)[1].tolist() for j, item in enumerate(items)}


def test_images_go_to_the_right_view_with_the_right_labels(tiny):
    src, pool, pseudo_dir, human = tiny
    labeled, pseudo = view_items(pool, src.ids, pseudo_dir, human)
    assert [src.ids[it.index] for it in labeled] == ["i0", "i4"]        # weak aug: every cell labeled
    assert [src.ids[it.index] for it in pseudo] == ["i1", "i2", "i3"]   # strong aug: the rest
    assert _targets(src, labeled) == {
        "i0": [[1] * 4] * 4,                    # the dataset's labels
        "i4": [[0] * 4] * 4}                    # the annotator's, not the ground truth (5)
    assert _targets(src, pseudo) == {
        "i1": [[2, 2, 7, 7], [2, 2, 7, 7], [7, 7, 7, 7], [7, 7, 7, 255]],   # GT in its cell, pseudo elsewhere
        "i2": [[8, 8, 8, 8], [8, 8, 8, 8], [8, 8, 8, 8], [8, 8, 8, 255]],   # pseudo only
        "i3": [[9, 9, 10, 10], [9, 9, 10, 10], [9, 9, 10, 10], [9, 9, 10, 10]]}  # human wins, even at (3, 3)
    # Without pseudo labels (a supervised stage) only the revealed cells of partial images are used.
    labeled, pseudo = view_items(pool, src.ids, None, human)
    assert [src.ids[it.index] for it in labeled] == ["i0", "i1", "i3", "i4"] and pseudo == []
    assert _targets(src, labeled)["i1"] == [[2, 2, 255, 255], [2, 2, 255, 255], [255] * 4, [255] * 4]
    assert _targets(src, labeled)["i3"] == [[255, 255, 10, 10]] * 4
    with pytest.raises(ValueError, match="human_path needs a bool cell array"):  # "all" = the dataset's labels
        SegmentationView(src, [ViewItem(4, "all", None, human[4])], transform=None)


def test_class_pixels_count_the_labels_as_revealed(tiny):
    src, pool, _, human = tiny
    new = np.zeros_like(CELLS)
    new[1, 0, 0] = new[2, 1, 0] = new[3, 1, 1] = True
    # Pool after the query: image 2 now has its cell (1, 0) revealed too.
    pool = LabelPool(src.ids, pool.grid, CELLS | new)
    stats = class_pixels(src, pool, new, human, DistContext())
    zero = {c: 0 for c in src.classes} | {"void": 0}
    # image 1 cell (0,0): 4 px pole (GT 2); image 2 cell (1,0): 3 px road (GT 3) + 1 void;
    # image 3 cell (1,1): 4 px bicyclist (the annotator's 10, its GT would be 4 = sidewalk).
    assert stats["queried_class_pixels"] == zero | {"pole": 4, "road": 3, "void": 1, "bicyclist": 4}
    # + image 0 (16 px building), image 3's other cell (4 px bicyclist), image 4 (16 px sky, human).
    assert stats["pool_class_pixels"] == zero | {"sky": 16, "building": 16, "pole": 4, "road": 3, "void": 1,
                                                 "bicyclist": 8}


# ---------------------------------------------------------------- each image's newest human labels
def test_views_read_each_images_newest_human_labels_and_reuse_brings_them_along(tmp_path):
    from al.oracle import copy_human_labels, human_label_paths
    stages = [tmp_path / "run" / name for name in ("00_teacher", "01_query1", "02_query2")]
    for stage, names in ((stages[1], ["a.png", "c__d.png"]), (stages[2], ["a.png"])):
        (stage / "human_labels").mkdir(parents=True)
        for name in names:
            (stage / "human_labels" / name).write_bytes(stage.name.encode())
    stages[0].mkdir()
    ids = ["a", "b", "c/d"]
    assert human_label_paths(stages, ids) == {0: str(stages[2] / "human_labels" / "a.png"),
                                              2: str(stages[1] / "human_labels" / "c__d.png")}
    assert human_label_paths(stages[:2], ids)[0] == str(stages[1] / "human_labels" / "a.png")
    # A stage reused from another run (init_from) gets a copy of its human labels, once.
    reused = tmp_path / "other" / "01_query1"
    reused.mkdir(parents=True)
    copy_human_labels(stages[1], reused)
    assert (reused / "human_labels" / "c__d.png").read_bytes() == b"01_query1"
    copy_human_labels(stages[2], reused)  # already there: left alone
    assert (reused / "human_labels" / "a.png").read_bytes() == b"01_query1"
    copy_human_labels(stages[0], tmp_path / "other" / "00_teacher")  # nothing to bring
    assert not (tmp_path / "other" / "00_teacher" / "human_labels").exists()
