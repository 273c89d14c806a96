"""Label Studio and CVAT round trips of a human query's annotation task (labelling.py).

The Label Studio test drives a real server (started here on 127.0.0.1 with its own SQLite
database; .ci/run installs it): create a project with our labelling config, import our tasks,
post an annotator's brush labels through the API, export, import the export into the task, and
compare pixel for pixel. tests/data/labelstudio_export.json is such an export, recorded from the
server (S4AL_RECORD_LABELSTUDIO=1), so the import is also checked where no server is installed.
"""
import json
import os
import time
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from PIL import Image

from al.annotate import read_annotations
from tests.helpers import (TASK_CLASSES as CLASSES, TASK_H as H, TASK_PALETTE as PALETTE, TASK_W as W, TEST_DATA,
                           LabelStudioServer, label_studio_executable, task_prediction, task_regions)

brush = pytest.importorskip("label_studio_sdk.converter.brush", reason="pip install -r requirements-labelling.txt")


FIXTURE = TEST_DATA / "labelstudio_export.json"


def annotators_labels(image_id):
    """What the test's annotator paints: a pattern of the 3 classes, and void in the top rows."""
    y, x = np.indices((H, W))
    labels = ((y // 4 + x // 8 + (image_id == "b")) % 3).astype(np.uint8)
    labels[:3] = 255
    return labels


def _run(*args):
    import labelling
    return labelling.main([str(a) for a in args])


def test_the_export_holds_regions_prediction_score_and_the_classes_config(task_dir, tmp_path):
    assert _run("export", task_dir.parent, "--document-root", tmp_path) == 0
    tasks = json.loads((task_dir.parent / "labelstudio_tasks.json").read_text())
    assert [t["data"]["s4al_id"] for t in tasks] == ["a", "b"]
    assert [t["data"]["score"] for t in tasks] == [0.9, 0.4]
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=a.png"
    for task in tasks:
        image_id, (prediction_result,) = task["data"]["s4al_id"], task["predictions"]
        regions, boxes = task_regions(image_id)
        rects = [r for r in prediction_result["result"] if r["type"] == "rectanglelabels"]
        got = [[r["value"][k] * (W if k in ("x", "width") else H) / 100 for k in ("x", "y", "width", "height")]
               for r in rects]
        np.testing.assert_allclose(got, boxes, atol=1e-9)
        painted = np.full((H, W), 255, np.uint8)
        for r in prediction_result["result"]:
            if r["type"] == "brushlabels":  # decoded by the SDK, not by us
                mask = brush.decode_rle(r["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 127
                painted[mask] = CLASSES.index(r["value"]["brushlabels"][0])
        np.testing.assert_array_equal(painted, np.where(regions, task_prediction(image_id), 255))
    config = ET.fromstring((task_dir.parent / "labelstudio_config.xml").read_text())
    labels = config.find("BrushLabels")
    assert labels.get("name") == "label" and labels.get("toName") == "image"
    assert [(lab.get("value"), lab.get("background")) for lab in labels] == [
        ("road", "#804080"), ("car", "#00008e"), ("tree", "#6b8e23")]
    cvat = json.loads((task_dir.parent / "cvat_labels.json").read_text())
    assert [(c["name"], c["color"]) for c in cvat] == [("road", "#804080"), ("car", "#00008e"), ("tree", "#6b8e23")]


def _check_imported(task_dir, ids=("a", "b"), expected=annotators_labels):
    for image_id in ids:
        stored = np.asarray(Image.open(task_dir.parent / "labels" / f"{image_id}.png"))
        np.testing.assert_array_equal(stored, expected(image_id))
    regions = {i: task_regions(i)[0] for i in ("a", "b")}
    read = read_annotations(task_dir, regions, num_classes=3, only=list(ids))
    for image_id in ids:
        np.testing.assert_array_equal(read[image_id], np.where(regions[image_id], expected(image_id), 255))


def test_a_recorded_label_studio_export_imports_pixel_for_pixel(task_dir, capsys):
    assert _run("import-labelstudio", task_dir.parent, FIXTURE) == 0
    assert "wrote 2 of 2 label files" in capsys.readouterr().out
    _check_imported(task_dir)


def test_a_bad_label_studio_export_is_one_error_and_writes_nothing(task_dir, tmp_path, capsys):
    export = json.loads(FIXTURE.read_text())
    export[1]["annotations"][0]["result"][0]["value"]["brushlabels"] = ["sky"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(export))
    assert _run("import-labelstudio", task_dir.parent, bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "'sky'" in err and err.count("\n") == 1
    assert not any((task_dir.parent / "labels").iterdir())  # nothing half-written


def _cvat_export(folder, masks, labelmap_extra=""):
    (folder / "SegmentationClass").mkdir(parents=True)
    (folder / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                         + "".join(f"{c}:{','.join(map(str, p))}::\n" for c, p in zip(CLASSES, PALETTE))
                                         + labelmap_extra)
    for image_id, ids in masks.items():
        rgb = np.zeros(ids.shape + (3,), np.uint8)
        for c, colour in enumerate(PALETTE):
            rgb[ids == c] = colour
        Image.fromarray(rgb).save(folder / "SegmentationClass" / f"{image_id}.png")
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in folder.rglob("*"):
            z.write(path, path.relative_to(folder))
    return archive


def test_a_cvat_segmentation_mask_export_drawn_at_twice_the_size_imports_resized(task_dir, tmp_path):
    # Drawn on the original photo (2x the working size, every pixel its own class): nearest
    # neighbour at pixel centres, as PIL computes it (a floor-based resize picks other pixels).
    rng = np.random.default_rng(0)
    big = {i: rng.integers(0, 3, (2 * H, 2 * W)).astype(np.uint8) for i in "ab"}
    archive = _cvat_export(tmp_path / "cvat", big)
    assert _run("import-cvat", task_dir.parent, archive) == 0
    _check_imported(task_dir, expected=lambda i: np.asarray(Image.fromarray(big[i]).resize((W, H), Image.NEAREST)))


def test_a_cvat_colour_missing_from_the_labelmap_is_an_error_naming_the_file(task_dir, tmp_path, capsys):
    labels = {"a": annotators_labels("a")}
    folder = tmp_path / "cvat"
    _cvat_export(folder, labels)
    png = folder / "SegmentationClass" / "a.png"
    rgb = np.asarray(Image.open(png)).copy()
    rgb[10, 10] = [1, 2, 3]
    Image.fromarray(rgb).save(png)
    assert _run("import-cvat", task_dir.parent, folder) == 2
    err = capsys.readouterr().err
    assert str(png) in err and "(1, 2, 3)" in err
    assert not (task_dir.parent / "labels" / "a.png").exists()


def test_palette_masks_give_their_indices_not_their_colours(task_dir, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    for image_id in "ab":
        image = Image.fromarray(annotators_labels(image_id), mode="L").convert("P")
        image.putpalette(sum(PALETTE, []) + [0, 0, 0] * 253)
        image.save(folder / f"{image_id}.png")
        assert Image.open(folder / f"{image_id}.png").mode == "P"
    assert _run("import-masks", task_dir.parent, folder) == 0
    _check_imported(task_dir)


# ---------------------------------------------------------------- the real server
def _annotation(image_id):
    """An annotator's result: one brush layer per class, encoded by the SDK."""
    labels = annotators_labels(image_id)
    return [{"type": "brushlabels", "from_name": "label", "to_name": "image", "original_width": W,
             "original_height": H, "image_rotation": 0,
             "value": {"format": "rle", "rle": brush.mask2rle((labels == c).astype(np.uint8) * 255),
                       "brushlabels": [name]}}
            for c, name in enumerate(CLASSES)]


@pytest.mark.slow
def test_a_real_label_studio_server_round_trip(task_dir, tmp_path):
    exe = label_studio_executable()
    if exe is None:
        pytest.skip("label-studio is not installed (.ci/run installs it into .ci-ls-venv)")
    assert _run("export", task_dir.parent, "--document-root", tmp_path) == 0
    started = time.time()
    data_dir = tmp_path / "ls"
    data_dir.mkdir()
    server = LabelStudioServer(exe, data_dir, document_root=tmp_path)
    try:
        project = server.api("POST", "/api/projects", json={
            "title": "s4al query1", "label_config": (task_dir.parent / "labelstudio_config.xml").read_text()})
        tasks = json.loads((task_dir.parent / "labelstudio_tasks.json").read_text())
        server.api("POST", f"/api/projects/{project['id']}/import", json=tasks)
        listed = server.api("GET", f"/api/tasks?project={project['id']}&fields=all")
        listed = listed["tasks"] if isinstance(listed, dict) else listed
        assert sorted(t["data"]["s4al_id"] for t in listed) == ["a", "b"]
        for task in listed:
            image_id = task["data"]["s4al_id"]
            # The server holds our pre-annotation: the model's task_prediction inside the regions.
            (kept,) = server.api("GET", f"/api/predictions?task={task['id']}")
            painted = np.full((H, W), 255, np.uint8)
            for r in kept["result"]:
                if r["type"] == "brushlabels":
                    painted[brush.decode_rle(r["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 127] = \
                        CLASSES.index(r["value"]["brushlabels"][0])
            np.testing.assert_array_equal(painted, np.where(task_regions(image_id)[0], task_prediction(image_id), 255))
            assert sum(r["type"] == "rectanglelabels" for r in kept["result"]) == len(task_regions(image_id)[1])
            server.api("POST", f"/api/tasks/{task['id']}/annotations/", json={"result": _annotation(image_id)})
        export = server.api("GET", f"/api/projects/{project['id']}/export?exportType=JSON")
    finally:
        server.stop()
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    assert _run("import-labelstudio", task_dir.parent, path) == 0
    _check_imported(task_dir)
    if os.environ.get("S4AL_RECORD_LABELSTUDIO"):
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(export, indent=1) + "\n")
    print(f"label studio round trip: {time.time() - started:.0f} s")
