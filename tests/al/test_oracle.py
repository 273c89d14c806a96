"""What the queries see and reveal: selection never reads ground truth, which image goes to which
training view with which labels, the class pixels a query reveals, and the report's
entropy-vs-random section. Expectations are worked out by hand on tiny hand-made pools."""
import json
import shutil

import cv2
import numpy as np
import pytest

from datasets import SegmentationView, ViewItem, build_source
from core.distributed import DistContext
from al.oracle import class_pixels, view_items
from al.pseudo import pseudo_label_file
from query.pool import LabelPool, RegionGrid

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


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture
def tiny(tmp_path):
    for k in range(5):
        _write(tmp_path / "data" / "train" / f"i{k}.png", np.full((4, 4, 3), 40 * k, np.uint8))
        label = np.full((4, 4), k + 1, np.uint8)
        if k == 2:
            label[2, 0] = 11  # CamVid's raw void
        _write(tmp_path / "data" / "trainannot" / f"i{k}.png", label)
    src = build_source("camvid", tmp_path / "data", "train")
    pseudo_dir = tmp_path / "pseudo"
    for k, value in ((1, 7), (2, 8), (3, 9)):
        pseudo = np.full((4, 4), value, np.uint8)
        pseudo[3, 3] = 255
        _write(pseudo_label_file(pseudo_dir, f"i{k}"), pseudo)
    human3 = np.full((4, 4), 255, np.uint8)
    human3[:, 2:] = 10
    _write(tmp_path / "human" / "i3.png", human3)
    _write(tmp_path / "human" / "i4.png", np.zeros((4, 4), np.uint8))
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


# ---------------------------------------------------------------- the report
def test_report_compares_what_entropy_and_random_queries_reveal(tmp_path):
    from experiments.summarize import summarize
    from tests.experiments.test_summarize import _stage, _write_summary
    runs = tmp_path / "runs"
    base = [_stage("teacher", "supervised", 10.0, 50.0), _stage("student", "self_train", 10.0, 52.0)]
    pool = {"sky": 600, "road": 300, "void": 100}
    entropy = [{"sky": 10, "road": 30, "void": 0}, {"sky": 10, "road": 50, "void": 0}]
    random = [{"sky": 40, "road": 20, "void": 20}, {"sky": 0, "road": 20, "void": 0}]
    for name, cycles in (("table1/camvid/row6", entropy), ("table1/camvid/row6_random", random)):
        queries = [{**_stage(f"query{i}", "query", 12.0, 55.0), "queried_class_pixels": c, "pool_class_pixels": pool}
                   for i, c in enumerate(cycles)]
        _write_summary(runs, name, name, base + queries)
    report = summarize(runs)
    section = report.split("## What the queries pick")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")][1:]
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("| class")}
    # entropy: 20 sky, 80 road of 100; random: 40 sky, 40 road, 20 void of 100; pool 60/30/10 %.
    assert rows == {"sky": ["20.00", "40.00", "-20.00", "60.00"], "road": ["80.00", "40.00", "+40.00", "30.00"],
                    "void": ["0.00", "20.00", "-20.00", "10.00"]}
    assert "`table1/camvid/row6` vs `table1/camvid/row6_random`" in section


def test_a_bad_class_pixel_count_names_the_file_and_key(tmp_path):
    from experiments.run_summaries import read_summary
    from tests.experiments.test_summarize import _stage, _write_summary
    path = _write_summary(tmp_path, "r", "r", [{**_stage("q", "query", 12.0, 50.0),
                                               "queried_class_pixels": {"sky": -3}}])
    with pytest.raises(ValueError, match=r"summary.json: stages\[0\]: queried_class_pixels: 'sky'"):
        read_summary(path)


# ---------------------------------------------------------------- selection never reads ground truth
@pytest.mark.slow
def test_selected_regions_do_not_depend_on_the_labels_of_unlabeled_images(al_run, tmp_path):
    """The same student and scores, but every unlabeled image's label is void: the query must
    pick exactly the same regions (a query step has no labels of unlabeled images)."""
    from core.config import load_config, save_config
    from tests.helpers import run_script, write_config
    data = tmp_path / "data"
    shutil.copytree(al_run["data"], data)
    initial = LabelPool.load(al_run["run"] / "00_teacher" / "pool.npz")
    for i in range(len(initial)):
        if not initial.cells[i].any():
            label = data / "trainannot" / f"{initial.ids[i]}.png"
            _write(label, np.full(cv2.imread(str(label), cv2.IMREAD_UNCHANGED).shape, 11, np.uint8))
    run = tmp_path / "run"
    cfg_file = write_config(tmp_path, "tiny_al", run, data)
    overrides = ["data.dataset=camvid"]  # read the modified copy as it is (never regenerated)
    run.mkdir()
    save_config(load_config(str(cfg_file), overrides), run / "config.yaml")
    for stage in ("00_teacher", "01_student"):  # the finished teacher and student, reused as they are
        shutil.copytree(al_run["run"] / stage, run / stage)
    result = run_script("train_al.py", cfg_file, *overrides, die_at="train_step:1")  # stop once selected
    assert (run / "02_query1" / "pool.npz").is_file(), result.stdout[-2000:] + result.stderr[-2000:]
    assert "already finished" in result.stdout
    selected = LabelPool.load(run / "02_query1" / "pool.npz").cells
    expected = LabelPool.load(al_run["run"] / "02_query1" / "pool.npz").cells
    assert selected.sum() == expected.sum() > initial.cells.sum()
    np.testing.assert_array_equal(selected, expected)
    scores = np.load(run / "02_query1" / "pseudo_done.npz")["scores"]
    np.testing.assert_array_equal(scores, np.load(al_run["run"] / "02_query1" / "pseudo_done.npz")["scores"])
    assert json.loads((al_run["run"] / "summary.json").read_text())["finished"]
