"""al/annotate.py, a human annotator instead of the ground truth (`query.oracle: human`): the task
files (the manifest contract), the checked import of the annotator's PNGs (read inside the regions
only; a bad, 1-bit or outside file), the labels accumulated per image, and labels for an image the
task does not list. (The demo run with a test as the annotator: tests/e2e/test_human_oracle.py.)"""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from al.annotate import (AnnotationError, Task, cumulative, read_annotations, read_imported, write_label_folder,
                         write_task)
from tests.helpers import TASK_H, TASK_W, png_bytes, write_png


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
    write_png(folder / "labels" / "a.png", a)
    # An outside tool may choose another file name inside the annotate folder (a path outside it
    # is refused: see below).
    manifest = json.loads(manifest_path.read_text())
    manifest["items"][1]["label"] = "from_tool/b.png"
    manifest_path.write_text(json.dumps(manifest))
    write_png(folder / "from_tool" / "b.png", np.full((6, 8), 1, np.uint8))
    labels = read_annotations(manifest_path, regions, num_classes=3)
    expected_a = np.full((6, 8), 255, np.uint8)
    expected_a[0:2, 0:4] = [[0, 1, 2, 255], [2, 2, 1, 0]]
    np.testing.assert_array_equal(labels["a"], expected_a)
    np.testing.assert_array_equal(labels["city/b"], np.where(regions["city/b"], 1, 255))


@pytest.mark.parametrize("case", ["missing", "unreadable", "colour", "wrong size", "out of range"])
def test_a_bad_label_file_is_an_error_naming_it(task, case):
    manifest_path, regions = task
    labels = manifest_path.parent / "labels"
    write_png(labels / "a.png", np.zeros((6, 8), np.uint8))
    bad = labels / "city__b.png"
    good_b = np.full((6, 8), 2, np.uint8)
    good_b[0, 0] = 7  # outside b's region: ignored
    if case == "unreadable":
        bad.write_bytes(b"not a png")
    elif case == "colour":
        write_png(bad, np.zeros((6, 8, 3), np.uint8))
    elif case == "wrong size":
        write_png(bad, np.zeros((6, 7), np.uint8))
    elif case == "out of range":
        write_png(bad, np.where(regions["city/b"] & (np.arange(8) == 7), 3, good_b))  # 3 classes only
    message = {"missing": "annotation file missing \\(1 of 2", "unreadable": "not a readable image",
               "colour": "single-channel 8-bit", "wrong size": "is 6x7, the image is 6x8",
               "out of range": r"class ids \[3\] inside the regions are out of range \(0..2, or 255"}[case]
    with pytest.raises(AnnotationError, match=f"^{re.escape(str(bad))}: .*{message}"):
        read_annotations(manifest_path, regions, num_classes=3)
    write_png(bad, good_b)
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


@pytest.mark.slow
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_an_annotation_label_outside_the_annotate_folder_is_refused(tmp_path, how):
    from al.annotate import AnnotationError, Task, read_annotations, write_task
    region = np.ones((6, 8), bool)
    image = np.zeros((6, 8, 3), np.uint8)
    manifest = write_task(tmp_path / "annotate", "q", ["bg", "fg"], [Task("a", None, image, region, image)], ["a"],
                          np.zeros((1, 1, 1), bool))
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(np.zeros((6, 8), np.uint8)))
    data = json.loads(manifest.read_text())
    if how == "symlink":
        (manifest.parent / "labels" / "a.png").symlink_to(outside)
        message = "outside the annotate folder"
    else:
        data["items"][0]["label"] = "../outside.png" if how == "dotdot" else str(outside)
        message = "may not use '..'"
    manifest.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=message):
        read_annotations(manifest, {"a": region}, num_classes=2)


@pytest.mark.slow
def test_a_one_bit_annotation_is_imported_as_indices(tmp_path):
    from al.annotate import Task, read_annotations, write_task
    region = np.zeros((6, 8), bool)
    region[:, :4] = True
    image = np.zeros((6, 8, 3), np.uint8)
    manifest = write_task(tmp_path / "annotate", "q", ["bg", "fg"], [Task("a", None, image, region, image)], ["a"],
                          np.zeros((1, 1, 1), bool))
    mask = np.zeros((6, 8), bool)
    mask[3:, :] = True
    Image.fromarray(mask).save(tmp_path / "annotate" / "labels" / "a.png")
    got = read_annotations(manifest, {"a": region}, num_classes=2)["a"]
    np.testing.assert_array_equal(got[:, :4], mask[:, :4].astype(np.uint8))
    assert (got[:, 4:] == 255).all()


def test_labels_for_an_image_the_task_does_not_list_are_refused(task_dir):
    from al.annotate import store_labels
    with pytest.raises(AnnotationError, match="'zz', which it does not list"):
        store_labels(task_dir, {"zz": np.zeros((TASK_H, TASK_W), np.uint8)})
