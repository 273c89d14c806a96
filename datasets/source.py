"""A segmentation source: an indexed list of (image, label) files, read at a working resolution.

Dataset-specific code (camvid.py, cityscapes.py) only builds the list of `SourceEntry`s; the
reading, validation and resizing below are shared, so every dataset fails the same way on bad
input: one exception whose message names the offending file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .cache import ResizedCache, png_size
from core.errors import MissingInput
from core.labels import IGNORE_INDEX, INVALID, check_palette
from .classes import default_palette
# read_rgb / read_label_png are looked up here at read time (tests replace them to count decodes).
from .decode import check_utf8_name, printable, read_label_png, read_rgb  # noqa: F401


@dataclass(frozen=True)
class SourceEntry:
    id: str
    image_path: str
    label_path: str | None  # None: an image nobody has labelled yet (a person's query pool)
    label_lut: np.ndarray  # 256-entry raw value -> train id table, see classes.py


def map_label(raw: np.ndarray, lut: np.ndarray, path: str, num_classes: int) -> np.ndarray:
    """Map raw label values to train ids; values the LUT marks invalid are an error naming `path`."""
    mapped = lut[raw]
    if (mapped == INVALID).any():
        bad = np.unique(raw[mapped == INVALID])
        raise ValueError(f"label values {bad.tolist()} out of range (expected train ids "
                         f"0..{num_classes - 1} or ignore) in {path}")
    return mapped.astype(np.uint8)


def resize_pair(img: np.ndarray, lab: np.ndarray, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (h, w): image with area averaging when shrinking, bilinear when growing;
    label always nearest, so no label value is ever invented. INTER_NEAREST_EXACT samples at
    pixel centres (like PIL); plain INTER_NEAREST floors and shifts labels by up to half a
    source pixel against the image."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img, lab
    shrinking = h * w < img.shape[0] * img.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    img = cv2.resize(img, (w, h), interpolation=interp)
    lab = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return img, lab


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def paired_folder_entries(image_dir: Path, label_dir: Path, lut: np.ndarray, *, what: str,
                          list_file: Path, unlabeled_ok: bool = False) -> list[SourceEntry]:
    """Pair every `<image_dir>/<stem>.png|jpg` with `<label_dir>/<stem>.png`, sorted by stem; a
    missing folder or label is an error naming it (`what` says which split of which data set).
    With `unlabeled_ok` (a pool a person labels), an image without label (or no label folder at
    all) is an entry with label_path None."""
    for folder in (image_dir, label_dir):
        if not folder.is_dir() and not (unlabeled_ok and folder == label_dir):
            raise MissingInput(f"{what}: folder not found: {folder} (and no list file {list_file})")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    entries = []
    for image_path in images:
        check_utf8_name(image_path)
        label_path = label_dir / f"{image_path.stem}.png"
        if not label_path.is_file():
            if not unlabeled_ok:
                raise MissingInput(f"no label for image {image_path}: expected {label_path}")
            label_path = None
        entries.append(SourceEntry(image_path.stem, str(image_path), label_path and str(label_path), lut))
    return entries


def read_list_file(path: str | os.PathLike, unlabeled_ok: bool = False) -> list[tuple[str, str | None]]:
    """Parse a split list: one `image label` pair per non-empty line (with `unlabeled_ok`, also
    `image` alone: an image nobody has labelled yet, label None)."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (a split given as a path is relative to the current folder, {printable(Path.cwd())})"
        raise MissingInput(f"split list file not found: {printable(path)}{where}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{printable(path)}: split list file is not UTF-8 text ({err})") from None
    pairs = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1 and unlabeled_ok:
            pairs.append((fields[0], None))
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{line_no}: expected 'image label', got {line!r}"
                             + (" (image-only lines are for a pool a person labels: query.oracle=human)"
                                if len(fields) == 1 else ""))
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise ValueError(f"split list file lists no images: {path}")
    return pairs


def parse_resize(resize) -> tuple[int, int] | None:
    if resize is None:
        return None
    if (not isinstance(resize, (tuple, list)) or len(resize) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                       for v in resize)):
        raise ValueError(f"resize must be None or (height, width) positive ints, got {resize!r}")
    return int(resize[0]), int(resize[1])


class SegmentationSource:
    """Images and labels of one split of one dataset.

    `read(i)` returns the i-th pair at the working resolution (`resize`, or native size), with
    labels as train ids (0..num_classes-1) and 255 = ignore. `palette`: uint8 (num_classes, 3)
    colours of the class ids in pictures (default: the project palette).
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str],
                 entries: Sequence[SourceEntry], resize=None, name: str = "", palette=None):
        self.root = Path(root)
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.palette = (default_palette(self.num_classes) if palette is None
                        else check_palette(palette, self.num_classes))
        self.resize = parse_resize(resize)
        self.name = name
        self._entries = list(entries)
        if not self._entries:
            raise ValueError(f"dataset {name or ''} at {self.root} has no images")
        seen: dict[str, str] = {}
        for entry in self._entries:
            check_utf8_name(entry.image_path)
            if entry.label_path is not None:
                check_utf8_name(entry.label_path)
            if entry.id in seen:
                raise ValueError(f"duplicate image id {entry.id!r}: {seen[entry.id]} and "
                                 f"{entry.image_path}")
            seen[entry.id] = entry.image_path
        self.ids = [entry.id for entry in self._entries]
        self.cache: ResizedCache | None = None  # see use_cache

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (f"SegmentationSource({self.name!r}, root={str(self.root)!r}, images={len(self)}, "
                f"classes={self.num_classes}, resize={self.resize})")

    def image_path(self, i: int) -> str:
        return self._entries[i].image_path

    def label_path(self, i: int) -> str | None:
        return self._entries[i].label_path

    def has_label(self, i: int) -> bool:
        """False for an image nobody has labelled yet (read() gives it an all-void label)."""
        return self._entries[i].label_path is not None

    def unlabeled(self) -> list[int]:
        return [i for i, entry in enumerate(self._entries) if entry.label_path is None]

    def check_files(self) -> None:
        """Check that every listed file exists (no decoding, so it is cheap on big datasets)."""
        for entry in self._entries:
            for kind, path in (("image", entry.image_path), ("label", entry.label_path)):
                if path is not None and not os.path.isfile(path):
                    raise MissingInput(f"{kind} file listed for {entry.id!r} not found: {path}")

    def use_cache(self, folder: str | os.PathLike | None) -> None:
        """Keep pairs that `resize` shrinks in `folder`, resized (see cache.py). At native size,
        or for images the working size does not shrink, reads stay direct."""
        self.cache = ResizedCache(folder, self.resize) if folder is not None and self.resize else None
        self._shrinks: dict[int, bool] = {}

    def _cached(self, i: int) -> bool:
        """Whether read(i) goes through the cache: the working size shrinks image i (known from
        its label PNG's header, looked at once per process; a non-PNG label is cached)."""
        if self.cache is None or self._entries[i].label_path is None:
            return False  # an unlabelled image is read directly (the cache keys on its label)
        if i not in self._shrinks:
            try:
                size = png_size(self._entries[i].label_path)
            except OSError:
                return False  # unreadable: the direct read reports it, naming the file
            h, w = self.resize
            self._shrinks[i] = size is None or size[0] * size[1] > h * w
        return self._shrinks[i]

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB (H, W, 3), uint8 train-id label (H, W)) at the working resolution;
        through the resized-image cache when `use_cache` set one (same arrays, bit for bit)."""
        entry = self._entries[i]
        if self._cached(i):
            return self.cache.read(entry.image_path, entry.label_path, entry.label_lut,
                                   lambda: self._decode(entry))
        return self._decode(entry)

    def _decode(self, entry: SourceEntry) -> tuple[np.ndarray, np.ndarray]:
        img = read_rgb(entry.image_path)
        if entry.label_path is None:  # not labelled yet: every pixel void (never trained on)
            lab = np.full(img.shape[:2], IGNORE_INDEX, np.uint8)
            return resize_pair(img, lab, self.resize) if self.resize is not None else (img, lab)
        raw = read_label_png(entry.label_path)
        if img.shape[:2] != raw.shape:
            raise ValueError(f"image/label size mismatch: {entry.image_path} is "
                             f"{img.shape[0]}x{img.shape[1]}, {entry.label_path} is "
                             f"{raw.shape[0]}x{raw.shape[1]}")
        lab = map_label(raw, entry.label_lut, entry.label_path, self.num_classes)
        if self.resize is not None:
            img, lab = resize_pair(img, lab, self.resize)
        return img, lab

    def image_size(self, i: int) -> tuple[int, int]:
        """(H, W) at the working resolution (decodes the label only when not resized)."""
        if self.resize is not None:
            return self.resize
        if self._entries[i].label_path is None:
            return read_rgb(self._entries[i].image_path).shape[:2]
        return read_label_png(self._entries[i].label_path).shape
