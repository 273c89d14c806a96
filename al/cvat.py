"""Labels from CVAT and from plain mask folders into a human query's annotation task.

CVAT's "Segmentation mask 1.1" export (a .zip or its unpacked folder):

    labelmap.txt                 `# label:color_rgb:parts:actions`, then `name:r,g,b::` per label
    SegmentationClass/<name>.png one RGB colour per label (what we read)
    SegmentationObject/, ImageSets/  (not needed)

Each colour becomes the class of the same name (`background`, unless it is one of the classes,
becomes void = 255); a colour the label map does not list is an error naming the file. A mask
folder (`import_masks`) holds one PNG of class ids per image (8-bit grey, palette as VOC and CVAT
write them, or 1-bit: the indices are read, never the colours). Either way a file is matched to
its item by the image's file name (stem), and labels drawn at another size are resized (nearest)
to the working size (al/annotate.py store_labels).
"""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np

from datasets.decode import ImageReadError, read_label_png, read_rgb
from al.annotate import AnnotationError, read_manifest, store_labels

BACKGROUND = "background"


def item_stems(manifest_path: Path) -> dict[str, str]:
    """{image file stem: item id}; two items with one stem cannot be told apart by file name."""
    stems: dict[str, str] = {}
    for item in read_manifest(manifest_path)["items"]:
        stem = Path(item["image"]).stem
        if stem in stems:
            raise AnnotationError(f"{manifest_path}: items {stems[stem]!r} and {item['id']!r} have the same image "
                                  f"file name {stem!r}; masks are matched by file name")
        stems[stem] = item["id"]
    return stems


def read_labelmap(path: Path, classes: list[str]) -> dict[tuple[int, int, int], int]:
    """{(r, g, b): class id or 255} of a CVAT labelmap.txt."""
    ids = {name: i for i, name in enumerate(classes)}
    colours: dict[tuple[int, int, int], int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: not a readable CVAT label map ({err})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        try:
            rgb = tuple(int(v) for v in rest.split(":")[0].split(","))
            assert len(rgb) == 3 and all(0 <= v <= 255 for v in rgb)
        except (ValueError, AssertionError):
            raise AnnotationError(f"{path}:{n}: expected 'name:r,g,b::', got {line!r}") from None
        if name in ids:
            colours[rgb] = ids[name]
        elif name == BACKGROUND:
            colours[rgb] = 255
        else:
            raise AnnotationError(f"{path}:{n}: label {name!r} is not one of the classes {classes} "
                                  f"(name the CVAT labels as the data set's classes)")
    return colours


def colours_to_ids(rgb: np.ndarray, colours: dict, path) -> np.ndarray:
    """(H, W, 3) label colours -> (H, W) uint8 class ids; an unknown colour is an error."""
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    out = np.full(code.shape, 255, np.uint8)
    known = np.zeros(code.shape, bool)
    for (r, g, b), class_id in colours.items():
        hit = code == ((r << 16) | (g << 8) | b)
        out[hit], known = class_id, known | hit
    if not known.all():
        y, x = np.argwhere(~known)[0]
        raise AnnotationError(f"{path}: colour {tuple(int(v) for v in rgb[y, x])} at pixel ({y}, {x}) is not in "
                              f"labelmap.txt ({int((~known).sum())} such pixels)")
    return out


def read_cvat_export(export: Path, manifest_path: Path) -> dict[str, np.ndarray]:
    """{id: (h, w) class ids} of every SegmentationClass mask of a CVAT export (zip or folder)."""
    export = Path(export)
    if export.is_file() and zipfile.is_zipfile(export):
        with tempfile.TemporaryDirectory() as tmp:
            with zipfile.ZipFile(export) as archive:
                for name in archive.namelist():
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise AnnotationError(f"{export}: member {name!r} points outside the archive")
                archive.extractall(tmp)
            return read_cvat_export(Path(tmp), manifest_path)
    if not (export / "labelmap.txt").is_file() or not (export / "SegmentationClass").is_dir():
        raise AnnotationError(f"{export}: not a CVAT 'Segmentation mask 1.1' export "
                              f"(needs labelmap.txt and SegmentationClass/)")
    colours = read_labelmap(export / "labelmap.txt", read_manifest(manifest_path)["classes"])
    stems = item_stems(manifest_path)
    out = {}
    for png in sorted((export / "SegmentationClass").rglob("*.png")):
        if png.stem not in stems:
            raise AnnotationError(f"{png}: no item of {manifest_path} has an image named {png.stem!r}")
        try:
            rgb = read_rgb(png)
        except (ImageReadError, FileNotFoundError) as err:
            raise AnnotationError(str(err)) from None
        out[stems[png.stem]] = colours_to_ids(rgb, colours, png)
    return out


def read_mask_folder(folder: Path, manifest_path: Path) -> dict[str, np.ndarray]:
    """{id: (h, w) class ids} of every `<image stem>.png` of a folder of index PNGs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotationError(f"{folder}: mask folder not found")
    stems = item_stems(manifest_path)
    out = {}
    for png in sorted(folder.glob("*.png")):
        if png.stem not in stems:
            raise AnnotationError(f"{png}: no item of {manifest_path} has an image named {png.stem!r}")
        try:
            out[stems[png.stem]] = read_label_png(png)
        except (ImageReadError, FileNotFoundError) as err:
            raise AnnotationError(str(err)) from None
    return out


def import_cvat(export: Path, manifest_path: Path) -> list[str]:
    return store_labels(manifest_path, read_cvat_export(export, manifest_path))


def import_masks(folder: Path, manifest_path: Path) -> list[str]:
    return store_labels(manifest_path, read_mask_folder(folder, manifest_path))
