"""Files exchanged with a human annotator (`query.oracle: human`): the task a query stage writes,
and the checked import of the labels the annotator wrote back. Pure file logic (no ranks):
al/oracle.py decides when to call what.

The task folder (`<run>/<NN_stage>/annotate/`):

    manifest.json   {"stage": str, "classes": [str], "ignore_index": int,
                     "items": [{"id": str, "image": str, "regions": str, "label": str}]}
                    `image`: the image to label; `regions`: PNG of its size, 255 where the
                    annotator must label, 0 elsewhere; `label`: where the annotator writes a PNG of
                    class ids (0..len(classes)-1, or ignore_index for void) at the image's size.
                    Paths are absolute or relative to the manifest's folder. Written last: its
                    presence means the folder is complete.
    regions/<id>.png, preview/<id>.png (overlay for people), images/<id>.png (only when the run
    works at another resolution than the image files), selection.npz (the selected cells, so an
    import can check that it imports the selection the manifest was made from).

The imported labels (`<run>/<NN_stage>/human_labels/`): one PNG of class ids per image, 255 outside
the cells a human labeled (cumulative over query stages), plus a copy of selection.npz. The folder
is written under a temporary name and renamed: its presence means the import is complete.
It lives in the engine beside the oracle that calls it: `query/` keeps only selection logic.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.decode import ImageReadError, read_label_png
from core.io import (atomic_folder, atomic_write_index_png, atomic_write_npz, atomic_write_png, atomic_write_text,
                     flat_name)

MANIFEST = "manifest.json"
SELECTION = "selection.npz"
IMPORTED = "imported.json"  # in human_labels/: the ids an import took
from core.labels import IGNORE_INDEX
ITEM_KEYS = ("id", "image", "regions", "label")


class AnnotationError(ValueError):
    """A missing or bad annotation file; the message names the file."""


def file_name(image_id: str) -> str:
    """PNG file name of an image id (Cityscapes ids contain '/')."""
    return flat_name(image_id) + ".png"


@dataclass
class Task:
    """One image to annotate."""
    id: str
    image_path: str | None  # the image file, or None: `image` is written into images/
    image: np.ndarray       # (H, W, 3) uint8 at the run's working resolution
    regions: np.ndarray     # (H, W) bool: the pixels to label
    preview: np.ndarray     # (H, W, 3) uint8 overlay for people
    boxes: list = ()        # [x, y, width, height] in pixels of each queried region
    score: float | None = None          # mean acquisition score of its queried regions (higher first)
    prediction: np.ndarray | None = None  # (H, W) uint8 the model's class ids (pre-annotation)


def read_selection(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, (N, gh, gw) bool cells) of a selection.npz."""
    if not Path(path).is_file():
        raise AnnotationError(f"{path}: selection file missing (the annotate folder is incomplete; delete it "
                              f"and run the same command again to write a new one)")
    with np.load(path, allow_pickle=False) as data:
        return [str(i) for i in data["ids"]], data["cells"].astype(bool)


# ----------------------------------------------------------------------------- the task
def write_task(folder: Path, stage: str, classes: list[str], tasks: list[Task], ids: list[str],
               selection: np.ndarray, palette: list | None = None) -> Path:
    """Write the annotate folder (manifest last) and return the manifest's path."""
    folder = Path(folder)
    items = []
    for task in tasks:
        name = file_name(task.id)
        atomic_write_png(folder / "regions" / name, task.regions.astype(np.uint8) * 255)
        atomic_write_png(folder / "preview" / name, task.preview)
        image = task.image_path
        if image is None:
            atomic_write_png(folder / "images" / name, task.image)
            image = f"images/{name}"
        item = {"id": task.id, "image": str(image), "regions": f"regions/{name}", "label": f"labels/{name}",
                "height": int(task.regions.shape[0]), "width": int(task.regions.shape[1]),
                "boxes": [list(map(int, b)) for b in task.boxes]}
        if task.score is not None:
            item["score"] = round(float(task.score), 6)
        if task.prediction is not None:  # class ids, shown in the data set's colours when a palette is given
            if palette is not None:
                atomic_write_index_png(folder / "prediction" / name, task.prediction, palette)
            else:
                atomic_write_png(folder / "prediction" / name, task.prediction)
            item["prediction"] = f"prediction/{name}"
        items.append(item)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    atomic_write_npz(folder / SELECTION, ids=np.array(ids, dtype=np.str_), cells=selection)
    manifest = {"stage": stage, "classes": list(classes), "ignore_index": IGNORE_INDEX, "items": items}
    if palette is not None:
        manifest["palette"] = [list(map(int, c)) for c in palette]
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return folder / MANIFEST


def read_manifest(path: Path) -> dict:
    """The manifest, checked against the contract (errors name the file and the key)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{path}: not a readable manifest ({err})") from None
    expected = {"stage": str, "classes": list, "ignore_index": int, "items": list}
    for key, kind in expected.items():
        if not isinstance(manifest, dict) or not isinstance(manifest.get(key), kind):
            raise AnnotationError(f"{path}: key '{key}' is missing or not a {kind.__name__}")
    for n, item in enumerate(manifest["items"]):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ITEM_KEYS):
            raise AnnotationError(f"{path}: items[{n}] needs string keys id, image, regions, label")
    return manifest


def resolve(manifest_path: Path, relative: str) -> Path:
    """An item's `label` path, the only manifest path the import reads. It must stay inside the
    annotate folder (relative, no `..`, no symlink that resolves outside), so an edited manifest or
    a planted link cannot make the run read a file elsewhere. (`image` may be absolute: it names
    the data set's own image for the annotator; the run never reads `image` or `regions` back.)"""
    folder = Path(manifest_path).parent
    if os.path.isabs(relative) or ".." in Path(relative).parts:
        raise AnnotationError(f"{manifest_path}: label path {relative!r} must be relative to the annotate "
                              f"folder and may not use '..'")
    path = folder / relative
    real = os.path.realpath(path)
    if not Path(real).is_relative_to(os.path.realpath(folder)):
        raise AnnotationError(f"{path}: label file resolves to {real}, outside the annotate folder "
                              f"{folder} (symlinks out of it are refused; copy the file in instead)")
    return path


# ----------------------------------------------------------------------------- the import
def read_annotations(manifest_path: Path, regions: dict[str, np.ndarray], num_classes: int,
                     only: list[str] | None = None) -> dict[str, np.ndarray]:
    """{id: (H, W) uint8 class ids inside the regions, 255 outside} for every image of `regions`
    ({id: (H, W) bool}, the selection the manifest was made from), or only for the ids `only`
    (a partial import: the images whose label file was written).

    Every file is checked before anything is returned: the first problem found (in manifest
    order) raises AnnotationError naming the file. Missing files are counted in the message, so
    a run started again before annotating says how many are still to do."""
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    _check_items(manifest_path, manifest, regions)
    listed = [item["id"] for item in manifest["items"] if only is None or item["id"] in only]
    paths = label_paths(manifest_path, manifest)
    missing = [paths[i] for i in listed if not paths[i].is_file()]
    if missing:
        raise AnnotationError(f"{missing[0]}: annotation file missing ({len(missing)} of {len(paths)} label files "
                              f"of {manifest_path} are missing; write them, then run the same command again)")
    return {image_id: _read_one(paths[image_id], regions[image_id], num_classes) for image_id in listed}


def _check_items(manifest_path: Path, manifest: dict, regions: dict) -> None:
    """The manifest lists exactly the images of `regions`."""
    listed = [item["id"] for item in manifest["items"]]
    if sorted(listed) != sorted(regions):
        odd = sorted(set(listed) ^ set(regions)) or listed
        raise AnnotationError(f"{manifest_path}: its items do not match the regions the stage selected "
                              f"({len(listed)} items, {len(regions)} images with regions; e.g. {odd[0]!r}); "
                              f"delete its folder and run the same command again for a new one")


def label_paths(manifest_path: Path, manifest: dict) -> dict[str, Path]:
    """{id: where the annotator writes its label PNG}."""
    return {item["id"]: resolve(manifest_path, item["label"]) for item in manifest["items"]}


def written_labels(manifest_path: Path, regions: dict[str, np.ndarray]) -> list[str]:
    """Ids of `regions` whose label file the annotator has written (in manifest order). The
    manifest must list exactly the images of `regions` (see read_annotations)."""
    manifest = read_manifest(manifest_path)
    _check_items(manifest_path, manifest, regions)
    paths = label_paths(manifest_path, manifest)
    return [item["id"] for item in manifest["items"] if paths[item["id"]].is_file()]


def _read_one(path: Path, region: np.ndarray, num_classes: int) -> np.ndarray:
    try:
        labels = read_label_png(path)  # the data sets' reader: 1-bit, grey and palette PNGs give indices
    except ImageReadError as err:
        raise AnnotationError(f"{path}: annotation file is not a readable image of class ids ({err})") from None
    if labels.shape != region.shape:
        raise AnnotationError(f"{path}: annotation is {labels.shape[0]}x{labels.shape[1]}, the image is "
                              f"{region.shape[0]}x{region.shape[1]}")
    inside = labels[region]
    bad = np.unique(inside[(inside >= num_classes) & (inside != IGNORE_INDEX)])
    if bad.size:
        raise AnnotationError(f"{path}: class ids {bad.tolist()[:5]} inside the regions are out of range "
                              f"(0..{num_classes - 1}, or {IGNORE_INDEX} for void)")
    out = np.full(labels.shape, IGNORE_INDEX, dtype=np.uint8)
    out[region] = inside
    return out


def read_mask(path: Path) -> np.ndarray:
    """A single-channel PNG this module wrote (regions, prediction), through the shared reader."""
    try:
        return read_label_png(path)
    except (ImageReadError, FileNotFoundError) as err:
        raise AnnotationError(str(err)) from None


def to_working_size(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Labels drawn at another size (e.g. the original photo while the run works at data.resize)
    resized to the working size, nearest neighbour at pixel centres as the data sets' labels are
    (datasets/source.py resize_pair): no class id is ever invented."""
    import cv2
    if labels.shape == tuple(size):
        return labels
    return cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST_EXACT)


def store_labels(manifest_path: Path, labels: dict[str, np.ndarray]) -> list[str]:
    """Write annotation tools' labels ({id: (h, w) uint8 class ids or 255}) where the manifest says,
    each resized (nearest) to its item's working size. Everything is checked before the first file
    is written: an id the manifest does not list is an error naming it. Returns the ids written."""
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    items = {item["id"]: item for item in manifest["items"]}
    unknown = sorted(set(labels) - set(items))
    if unknown:
        raise AnnotationError(f"{manifest_path}: labels for {unknown[0]!r}, which it does not list "
                              f"({len(unknown)} such images)")
    ready = {}
    for image_id, array in labels.items():
        item = items[image_id]
        size = (int(item["height"]), int(item["width"])) if "height" in item else \
            read_mask(resolve(manifest_path, item["regions"])).shape
        if array.ndim != 2 or array.dtype != np.uint8:
            raise AnnotationError(f"labels of {image_id!r}: need (H, W) uint8 class ids, got {array.shape} {array.dtype}")
        ready[image_id] = to_working_size(array, size)
    for image_id, array in ready.items():
        atomic_write_png(resolve(manifest_path, items[image_id]["label"]), array)
    return sorted(ready)


def cumulative(previous: np.ndarray | None, new: np.ndarray, region: np.ndarray) -> np.ndarray:
    """An image's human labels after this cycle: the earlier ones, with this cycle's regions added."""
    out = np.full(new.shape, IGNORE_INDEX, dtype=np.uint8) if previous is None else previous.copy()
    out[region] = new[region]
    return out


def write_label_folder(folder: Path, labels: dict[str, np.ndarray], selection: Path) -> None:
    """The imported labels, under a temporary name renamed into place (a killed import leaves
    either no folder or a complete one)."""
    # A `.partial` left by a killed import is removed first: the import is redone from the annotator's files.
    with atomic_folder(folder, temporary=_partial(folder)) as partial:
        for image_id, array in labels.items():
            atomic_write_png(partial / file_name(image_id), array)
        shutil.copy2(selection, partial / SELECTION)
        atomic_write_text(partial / IMPORTED, json.dumps({"imported": sorted(labels)}, indent=1) + "\n")


def _partial(folder: Path) -> str:
    """The temporary name of a human_labels folder being written (one writer: the run's rank 0)."""
    return f".{Path(folder).name}.partial"


def read_imported(folder: Path) -> list[str]:
    """Ids of the images a finished import took (a partial import leaves the others unlabelled).
    A folder from before partial imports has no list: every selected image was imported, and
    each has its PNG there."""
    path = Path(folder) / IMPORTED
    if not path.is_file():
        return None
    try:
        imported = json.loads(path.read_text())["imported"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AnnotationError(f"{path}: not a readable list of imported images ({err})") from None
    return [str(i) for i in imported]


def copy_label_folder(src: Path, dst: Path) -> None:
    """Copy a finished human_labels folder (a stage reused from another run), atomically."""
    with atomic_folder(dst, temporary=_partial(dst)) as partial:
        shutil.copytree(src, partial, dirs_exist_ok=True)
