"""A human annotator instead of the ground truth (`query.oracle: human`), end to end: the demo run with
a test playing the annotator (the task it writes, bad label files, an annotator who copies the
ground truth and one who does not, a partial import, a campaign that grows), and a campaign on your
own photos whose unlabelled images have no label file (the labelled seed and the evaluation split
keep theirs; with the ground-truth oracle a missing label stays an error)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tests.helpers import FOLDER_CLASSES, assert_same_weights, final_weights, make_photos, run_script, write_png


# ---------------------------------------------------------------- the demo, with a test as the annotator
DEMO = ["data.synthetic.num_train=10", "data.synthetic.num_val=3", "data.synthetic.num_test=1",
        "stages.teacher.epochs=1", "stages.student=null", "stages.query2=null", "stages.query1.epochs=1",
        "stage_defaults.iters_per_epoch=3", "runtime.amp=none", "runtime.device=cpu", "deterministic=true",
        "data.workers=0"]


REGION = 16  # the demo's 16x16 regions on 96x128 images


def _demo(base, name, *extra):
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
        write_png(manifest_path.parent / item["label"], labels_of(item["id"]))
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
            write_png(path, content)
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
        write_png(run / "01_query1" / "annotate" / item["label"], truth[item["id"]])
    steps["without flag"] = _demo(demo_base, "campaign", "query.oracle=human")
    steps["waiting summary"] = json.loads((run / "summary.json").read_text())
    steps["partial"] = _demo(demo_base, "campaign", "query.oracle=human", "--import-partial")
    grown = [a for a in DEMO if a != "stages.query2=null"] + ["stages.query2.epochs=1"]
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


# ---------------------------------------------------------------- a campaign on your own photos
PHOTOS_CONFIG = """
seed: 1
deterministic: true
data: {{dataset: folder, root: {root}, train_split: train, eval_split: val, classes: {classes},
        crop_size: [32, 48], workers: 0}}
model: {{backbone: mobilenet_v2, pretrained: none, rep_dim: 8}}
loss: {{num_queries: 8, num_negatives: 16}}
runtime: {{device: cpu, amp: none}}
query: {{region_size: [16, 16], regions_per_image: 2, vis_images: 1}}
stage_defaults: {{epochs: 1, iters_per_epoch: 2, init: scratch}}
stages:
  teacher: {{kind: supervised, batch_labeled: 2}}
  query1: {{kind: query, batch_labeled: 1, batch_unlabeled: 2, init: teacher}}
output_dir: {out}
"""


@pytest.mark.slow
def test_a_campaign_on_photos_with_two_labelled_starts_and_asks_for_the_rest(tmp_path):
    from core.cli import EXIT_AWAITING_LABELS
    root = tmp_path / "photos"
    make_photos(root)
    cfg = tmp_path / "photos.yaml"
    cfg.write_text(PHOTOS_CONFIG.format(root=root, classes=FOLDER_CLASSES, out=tmp_path / "run"))
    seed = f"data.labeled_split={root / 'lists' / 'seed.txt'}"
    # The ground-truth oracle reads labels that do not exist: one error line naming the file.
    truth = run_script("train_al.py", cfg, seed)
    assert truth.returncode == 2 and "p2.png" in truth.stderr and "Traceback" not in truth.stderr, truth.stderr[-2000:]
    # A person labels the pool, but the seed must be named (a random draw could pick p2).
    unnamed = run_script("train_al.py", cfg, "query.oracle=human")
    assert unnamed.returncode == 2 and "data.labeled_split" in unnamed.stderr, unnamed.stderr[-2000:]
    result = run_script("train_al.py", cfg, "query.oracle=human", seed)
    assert result.returncode == EXIT_AWAITING_LABELS, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "01_query1" / "annotate" / "manifest.json").read_text())
    assert sorted(item["id"] for item in manifest["items"]) == ["p2", "p3", "p4", "p5"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"][0]["labeled_pixel_pct"] == pytest.approx(100 * 2 / 6)
