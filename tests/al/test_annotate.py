"""A human annotator instead of the ground truth (`query.oracle: human`): the task files, the checked
import of the annotator's PNGs, and the demo run end to end with a test playing the annotator."""
import json
import re

import cv2
import numpy as np
import pytest

from al.annotate import (AnnotationError, Task, cumulative, read_annotations, read_imported,
                            write_label_folder, write_task)


def _region(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def _task(image_id, path, value, region):
    image = np.full(region.shape + (3,), value, np.uint8)
    return Task(id=image_id, image_path=path, image=image, regions=region, preview=image)


@pytest.fixture
def task(tmp_path):
    """Two images of 6x8: 'a' (a file elsewhere) to label in rows 0-1 x cols 0-3, 'city/b' (kept as a
    copy: the run resized it) in rows 3-5 x cols 4-7."""
    regions = {"a": _region((6, 8), slice(0, 2), slice(0, 4)), "city/b": _region((6, 8), slice(3, 6), slice(4, 8))}
    tasks = [_task("a", "/data/a.png", 10, regions["a"]), _task("city/b", None, 20, regions["city/b"])]
    selection = np.zeros((2, 2, 2), bool)
    manifest = write_task(tmp_path / "annotate", "query1", ["sky", "road", "car"], tasks, ["a", "city/b"], selection)
    return manifest, regions


def _write_label(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def test_the_task_follows_the_manifest_contract(task):
    manifest_path, regions = task
    folder = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    assert manifest == {"stage": "query1", "classes": ["sky", "road", "car"], "ignore_index": 255, "items": [
        {"id": "a", "image": "/data/a.png", "regions": "regions/a.png", "label": "labels/a.png",
         "height": 6, "width": 8, "boxes": []},
        {"id": "city/b", "image": "images/city__b.png", "regions": "regions/city__b.png",
         "label": "labels/city__b.png", "height": 6, "width": 8, "boxes": []}]}
    for item in manifest["items"]:
        png = cv2.imread(str(folder / item["regions"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, np.where(regions[item["id"]], 255, 0))   # 255 = to label
        assert (folder / "preview" / item["regions"].split("/")[1]).is_file()
    copy = cv2.imread(str(folder / "images" / "city__b.png"))
    assert copy.shape == (6, 8, 3) and (copy == 20).all()
    assert (folder / "labels").is_dir() and not any((folder / "labels").iterdir())


def test_labels_are_read_inside_the_regions_only(task, tmp_path):
    manifest_path, regions = task
    folder = manifest_path.parent
    a = np.full((6, 8), 200, np.uint8)      # out of range outside the region: never read
    a[0:2, 0:4] = [[0, 1, 2, 255], [2, 2, 1, 0]]
    _write_label(folder / "labels" / "a.png", a)
    # An outside tool may choose another file name inside the annotate folder (a path outside it
    # is refused: tests/test_bad_inputs.py).
    manifest = json.loads(manifest_path.read_text())
    manifest["items"][1]["label"] = "from_tool/b.png"
    manifest_path.write_text(json.dumps(manifest))
    _write_label(folder / "from_tool" / "b.png", np.full((6, 8), 1, np.uint8))
    labels = read_annotations(manifest_path, regions, num_classes=3)
    expected_a = np.full((6, 8), 255, np.uint8)
    expected_a[0:2, 0:4] = [[0, 1, 2, 255], [2, 2, 1, 0]]
    np.testing.assert_array_equal(labels["a"], expected_a)
    np.testing.assert_array_equal(labels["city/b"], np.where(regions["city/b"], 1, 255))


@pytest.mark.parametrize("case", ["missing", "unreadable", "colour", "wrong size", "out of range"])
def test_a_bad_label_file_is_an_error_naming_it(task, case):
    manifest_path, regions = task
    labels = manifest_path.parent / "labels"
    _write_label(labels / "a.png", np.zeros((6, 8), np.uint8))
    bad = labels / "city__b.png"
    good_b = np.full((6, 8), 2, np.uint8)
    good_b[0, 0] = 7  # outside b's region: ignored
    if case == "unreadable":
        bad.write_bytes(b"not a png")
    elif case == "colour":
        _write_label(bad, np.zeros((6, 8, 3), np.uint8))
    elif case == "wrong size":
        _write_label(bad, np.zeros((6, 7), np.uint8))
    elif case == "out of range":
        _write_label(bad, np.where(regions["city/b"] & (np.arange(8) == 7), 3, good_b))  # 3 classes only
    message = {"missing": "annotation file missing \\(1 of 2", "unreadable": "not a readable image",
               "colour": "single-channel 8-bit", "wrong size": "is 6x7, the image is 6x8",
               "out of range": r"class ids \[3\] inside the regions are out of range \(0..2, or 255"}[case]
    with pytest.raises(AnnotationError, match=f"^{re.escape(str(bad))}: .*{message}"):
        read_annotations(manifest_path, regions, num_classes=3)
    _write_label(bad, good_b)
    assert read_annotations(manifest_path, regions, num_classes=3)["city/b"][5, 7] == 2


def test_a_manifest_for_other_images_is_refused(task):
    manifest_path, regions = task
    with pytest.raises(AnnotationError, match="do not match the regions the stage selected"):
        read_annotations(manifest_path, {"a": regions["a"]}, num_classes=3)


def test_human_labels_accumulate_and_their_folder_appears_whole(tmp_path):
    earlier = np.full((2, 3), 255, np.uint8)
    earlier[0, 0] = 4
    new = np.array([[9, 1, 1], [9, 9, 2]], np.uint8)
    region = np.array([[False, True, True], [False, False, True]])
    np.testing.assert_array_equal(cumulative(earlier, new, region), [[4, 1, 1], [255, 255, 2]])
    np.testing.assert_array_equal(cumulative(None, new, region), [[255, 1, 1], [255, 255, 2]])
    selection = tmp_path / "selection.npz"
    selection.write_bytes(b"x")
    stale = tmp_path / "stage" / ".human_labels.partial"
    stale.mkdir(parents=True)
    (stale / "junk.png").write_bytes(b"left by a killed import")
    write_label_folder(tmp_path / "stage" / "human_labels", {"a/b": new}, selection)
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["human_labels"]
    folder = tmp_path / "stage" / "human_labels"
    assert sorted(p.name for p in folder.iterdir()) == ["a__b.png", "imported.json", "selection.npz"]
    assert read_imported(folder) == ["a/b"]  # the ids the import took (a partial import names fewer)


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


# ---------------------------------------------------------------- the demo, with a test as the annotator
DEMO = ["data.synthetic.num_train=10", "data.synthetic.num_val=3", "data.synthetic.num_test=1",
        "stages.teacher.epochs=1", "stages.student=null", "stages.query2=null", "stages.query1.epochs=1",
        "stage_defaults.iters_per_epoch=3", "runtime.amp=none", "runtime.device=cpu", "deterministic=true",
        "data.workers=0"]
REGION = 16  # the demo's 16x16 regions on 96x128 images


def _demo(base, name, *extra):
    from tests.helpers import run_script
    return run_script("train_al.py", "demo", *DEMO, f"data.root={base / 'data'}", f"output_dir={base / name}", *extra)


def _ground_truth(base):
    from datasets import build_source
    src = build_source("camvid", base / "data", "train")
    return {image_id: src.read(i)[1] for i, image_id in enumerate(src.ids)}


def _play_annotator(run, labels_of):
    """Write labels_of(id) into every item's `label` path, as the manifest says."""
    manifest_path = run / "01_query1" / "annotate" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for item in manifest["items"]:
        _write_label(manifest_path.parent / item["label"], labels_of(item["id"]))
    return manifest


def _new_cells(run):
    from query.pool import LabelPool
    before = LabelPool.load(run / "00_teacher" / "pool.npz")
    after = LabelPool.load(run / "01_query1" / "pool.npz")
    return after.ids, after.cells & ~before.cells, before.cells


def _pixels(cells):
    return np.kron(cells, np.ones((REGION, REGION), int)).astype(bool)  # cells -> pixels, by hand


def _stage_files(run):
    """Every path under the stage folders (but the annotator's labels) with its size and mtime."""
    out = {}
    for path in run.rglob("*"):
        rel = path.relative_to(run)
        if rel.parts[0][:2].isdigit() and rel.parts[1:3] != ("annotate", "labels"):
            out[str(rel)] = (path.is_dir(), path.stat().st_size if path.is_file() else 0, path.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def demo_base(tmp_path_factory):
    return tmp_path_factory.mktemp("human_demo")


@pytest.fixture(scope="module")
def gt_run(demo_base):
    result = _demo(demo_base, "gt")
    assert result.returncode == 0, result.stderr[-3000:]
    return demo_base / "gt"


@pytest.fixture(scope="module")
def awaiting(demo_base, gt_run):
    result = _demo(demo_base, "human", "query.oracle=human")
    return {"run": demo_base / "human", "result": result}


@pytest.fixture(scope="module")
def bad_file_runs(demo_base, awaiting):
    """Each bad label file in turn (the others correct): the runs' results and what changed."""
    run, truth = awaiting["run"], _ground_truth(demo_base)
    manifest = _play_annotator(run, truth.__getitem__)
    items = manifest["items"]
    labels = [run / "01_query1" / "annotate" / item["label"] for item in items]
    region = cv2.imread(str(run / "01_query1" / "annotate" / items[3]["regions"]), cv2.IMREAD_UNCHANGED) == 255
    out_of_range = truth[items[3]["id"]].copy()
    out_of_range[tuple(np.argwhere(region)[0])] = 11  # a class id the demo's 11 classes do not have
    cases = {"missing": (labels[0], None), "unreadable": (labels[1], b"\x89PNG broken"),
             "wrong size": (labels[2], np.zeros((96, 127), np.uint8)), "out of range": (labels[3], out_of_range)}
    results = {}
    for case, (path, content) in cases.items():
        good = path.read_bytes()
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            _write_label(path, content)
        before = _stage_files(run)
        results[case] = (path, _demo(demo_base, "human", "query.oracle=human"), before, _stage_files(run))
        path.write_bytes(good)
    return results


@pytest.fixture(scope="module")
def imported(demo_base, awaiting, bad_file_runs):
    _play_annotator(awaiting["run"], _ground_truth(demo_base).__getitem__)
    result = _demo(demo_base, "human", "query.oracle=human")
    assert result.returncode == 0, result.stderr[-3000:]
    return awaiting["run"]


@pytest.mark.slow
def test_a_human_query_writes_the_task_and_stops_cleanly(awaiting):
    from core.cli import EXIT_AWAITING_LABELS
    run, result = awaiting["run"], awaiting["result"]
    assert EXIT_AWAITING_LABELS not in (0, 2)  # neither success nor bad input
    assert result.returncode == EXIT_AWAITING_LABELS, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    manifest_path = run / "01_query1" / "annotate" / "manifest.json"
    assert str(manifest_path) in result.stdout and "run the same command again" in result.stdout
    manifest = json.loads(manifest_path.read_text())
    assert manifest["stage"] == "query1" and len(manifest["classes"]) == 11 and manifest["ignore_index"] == 255
    assert len(manifest["items"]) == 8  # 10 images, 2 labeled at the start
    for item in manifest["items"]:
        assert item["image"] == str(run.parent / "data" / "train" / f"{item['id']}.png")
        regions = cv2.imread(str(manifest_path.parent / item["regions"]), cv2.IMREAD_UNCHANGED)
        cells = regions.reshape(6, REGION, 8, REGION).max(axis=(1, 3)) == 255
        np.testing.assert_array_equal(regions == 255, _pixels(cells))  # whole regions...
        assert cells.sum() == 4                                          # ...4 per image
    assert not (run / "01_query1" / "metrics.json").exists() and not (run / "01_query1" / "pool.npz").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] is False and summary["state"] == "waiting_for_labels"
    assert summary["waiting"] == {"stage": "query1", "manifest": str(manifest_path.resolve()),
                                  "label_files_missing": 8, "label_files": 8}


@pytest.mark.slow
def test_a_missing_label_file_means_waiting_not_an_error(bad_file_runs, demo_base):
    from core.cli import EXIT_AWAITING_LABELS
    path, result, before, after = bad_file_runs["missing"]
    assert result.returncode == EXIT_AWAITING_LABELS, result.stderr[-3000:]
    assert "1 of 8 label files are missing" in result.stdout and "--import-partial" in result.stdout
    assert not [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert after == before  # nothing imported


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unreadable", "wrong size", "out of range"])
def test_a_bad_annotation_is_one_error_line_and_changes_nothing(bad_file_runs, case):
    path, result, before, after = bad_file_runs[case]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and str(path) in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert after == before


@pytest.mark.slow
def test_an_annotator_copying_the_ground_truth_ends_like_the_ground_truth_run(gt_run, imported):
    from tests.helpers import assert_same_weights, final_weights
    gt = json.loads((gt_run / "summary.json").read_text())
    human = json.loads((imported / "summary.json").read_text())
    assert human["finished"] is True
    keys = ("name", "labeled_pixel_pct", "miou", "per_class_iou", "queried_class_pixels", "pool_class_pixels")
    assert [{k: s.get(k) for k in keys} for s in human["stages"]] == [{k: s.get(k) for k in keys} for s in gt["stages"]]
    assert "queried_class_pixels" in human["stages"][1]
    for stage in ("00_teacher", "01_query1"):
        assert (imported / stage / "pool.npz").read_bytes() == (gt_run / stage / "pool.npz").read_bytes()
    assert_same_weights(final_weights(imported), final_weights(gt_run))


@pytest.mark.slow
def test_the_annotators_labels_not_the_ground_truth_are_what_the_run_learns_from(demo_base, gt_run):
    from tests.helpers import final_weights
    truth = _ground_truth(demo_base)
    first = _demo(demo_base, "other", "query.oracle=human")
    assert first.returncode == 3, first.stderr[-3000:]  # waiting for labels
    # The annotator calls every class the next one (void stays void): plainly not the ground truth.
    given = {i: np.where(t == 255, 255, (t.astype(int) + 1) % 11).astype(np.uint8) for i, t in truth.items()}
    _play_annotator(demo_base / "other", given.__getitem__)
    second = _demo(demo_base, "other", "query.oracle=human")
    assert second.returncode == 0, second.stderr[-3000:]
    run = demo_base / "other"
    ids, new, initial = _new_cells(run)
    classes = json.loads((run / "summary.json").read_text())["classes"]
    queried, pool = np.zeros(12, int), np.zeros(12, int)  # 11 classes + void, counted by hand
    for i, image_id in enumerate(ids):
        if initial[i].all():
            pool += np.bincount(np.where(truth[image_id] == 255, 11, truth[image_id]).ravel(), minlength=12)
        if new[i].any():
            stored = cv2.imread(str(run / "01_query1" / "human_labels" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
            mask = _pixels(new[i])
            np.testing.assert_array_equal(stored, np.where(mask, given[image_id], 255))
            counts = np.bincount(np.where(given[image_id] == 255, 11, given[image_id])[mask], minlength=12)
            queried, pool = queried + counts, pool + counts
    stage = json.loads((run / "summary.json").read_text())["stages"][1]
    assert stage["queried_class_pixels"] == dict(zip(classes + ["void"], queried.tolist()))
    assert stage["pool_class_pixels"] == dict(zip(classes + ["void"], pool.tolist()))
    metrics = json.loads((run / "01_query1" / "metrics.json").read_text())
    assert metrics["queried_class_pixels"] == stage["queried_class_pixels"]
    gt_stage = json.loads((gt_run / "summary.json").read_text())["stages"][1]
    assert gt_stage["queried_class_pixels"] != stage["queried_class_pixels"]
    # Same regions, other labels: the student trained on them ends elsewhere than the GT run's.
    assert stage["labeled_pixel_pct"] == gt_stage["labeled_pixel_pct"]
    final, reference = final_weights(run), final_weights(gt_run)
    assert any(not np.array_equal(final[k].numpy(), reference[k].numpy()) for k in final)


# ---------------------------------------------------------------- a campaign: partial imports, more cycles
@pytest.fixture(scope="module")
def campaign(demo_base):
    """query1 asks 8 images; the annotator labels 3 (copying the ground truth) and imports them
    with --import-partial; then the campaign grows by query2 (the demo's own, no --overwrite)."""
    run = demo_base / "campaign"
    steps = {"ask": _demo(demo_base, "campaign", "query.oracle=human")}  # generates the data if needed
    truth = _ground_truth(demo_base)
    manifest = json.loads((run / "01_query1" / "annotate" / "manifest.json").read_text())
    labelled = [item["id"] for item in manifest["items"][:3]]
    for item in manifest["items"][:3]:
        _write_label(run / "01_query1" / "annotate" / item["label"], truth[item["id"]])
    steps["without flag"] = _demo(demo_base, "campaign", "query.oracle=human")
    steps["waiting summary"] = json.loads((run / "summary.json").read_text())
    steps["partial"] = _demo(demo_base, "campaign", "query.oracle=human", "--import-partial")
    grown = [a for a in DEMO if a != "stages.query2=null"] + ["stages.query2.epochs=1"]
    from tests.helpers import run_script
    steps["grown"] = run_script("train_al.py", "demo", *grown, f"data.root={demo_base / 'data'}",
                                f"output_dir={run}", "query.oracle=human")
    return {"run": run, "steps": steps, "labelled": labelled, "items": [i["id"] for i in manifest["items"]]}


@pytest.mark.slow
def test_a_partial_import_reveals_only_the_labelled_images_with_exact_pixels(campaign):
    from core.cli import EXIT_AWAITING_LABELS
    steps, run = campaign["steps"], campaign["run"]
    assert steps["ask"].returncode == EXIT_AWAITING_LABELS
    assert steps["without flag"].returncode == EXIT_AWAITING_LABELS, steps["without flag"].stderr[-2000:]
    assert "5 of 8 label files are missing" in steps["without flag"].stdout
    assert steps["waiting summary"]["waiting"]["label_files_missing"] == 5
    assert steps["partial"].returncode == 0, steps["partial"].stderr[-3000:]
    ids, new, initial = _new_cells(run)
    revealed = sorted(ids[i] for i in np.flatnonzero(new.any(axis=(1, 2))))
    assert revealed == sorted(campaign["labelled"])  # the 5 others stay unlabelled
    assert all(new[ids.index(i)].sum() == 4 for i in revealed)
    record = json.loads((run / "01_query1" / "metrics.json").read_text())
    pixels = initial.sum() * REGION * REGION + 3 * 4 * REGION * REGION  # by hand: 16x16 cells tile 96x128
    assert record["record"]["labeled_pixel_pct"] == pytest.approx(100.0 * pixels / (10 * 96 * 128), abs=1e-9)
    imported = record["human_import"]
    assert imported == {"images_asked": 8, "images_labelled": 3, "regions_asked": 32, "regions_labelled": 12,
                        "pixels_asked": 32 * REGION * REGION, "pixels_labelled": 12 * REGION * REGION,
                        "not_labelled": sorted(set(campaign["items"]) - set(campaign["labelled"]))}
    summary_stage = [s for s in json.loads((run / "summary.json").read_text())["stages"] if s["name"] == "query1"][0]
    assert summary_stage["human_import"] == imported


@pytest.mark.slow
def test_a_campaign_grows_in_place_and_asks_again_for_the_unlabelled_images(campaign):
    from core.cli import EXIT_AWAITING_LABELS
    grown, run = campaign["steps"]["grown"], campaign["run"]
    assert grown.returncode == EXIT_AWAITING_LABELS, grown.stderr[-3000:]
    assert "already finished" in grown.stdout and "different config" not in grown.stderr
    manifest = json.loads((run / "02_query2" / "annotate" / "manifest.json").read_text())
    asked = {item["id"] for item in manifest["items"]}
    not_labelled = set(campaign["items"]) - set(campaign["labelled"])
    assert not_labelled <= asked  # never labelled: still unlabelled, asked again
    summary = json.loads((run / "summary.json").read_text())
    assert summary["state"] == "waiting_for_labels" and summary["waiting"]["stage"] == "query2"
    assert [s["name"] for s in summary["stages"]] == ["teacher", "query1"]
