"""CamVid in the SegNet layout: `{split}/` images, `{split}annot/` labels, optional `{split}.txt`.

The synthetic street-scene set is written in the same layout and read by this same code.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .classes import CAMVID_CLASSES, CAMVID_LUT
from .source import SegmentationSource, SourceEntry, paired_folder_entries, read_list_file


def _relative_to_root(path_text: str) -> str:
    """SegNet's own list files use absolute paths of the authors' machine
    ("/SegNet/CamVid/train/x.png"); only the last two components (`split/file`) carry meaning."""
    path = PurePosixPath(path_text)
    if path.is_absolute():
        return str(PurePosixPath(*path.parts[-2:]))
    return path_text


def camvid_entries_from_list(root: Path, list_path: str | os.PathLike) -> list[SourceEntry]:
    entries = []
    for image_text, label_text in read_list_file(list_path):
        image_path = root / _relative_to_root(image_text)
        label_path = root / _relative_to_root(label_text)
        entries.append(SourceEntry(Path(image_path).stem, str(image_path), str(label_path),
                                   CAMVID_LUT))
    return entries


def camvid_entries_from_folders(root: Path, split: str) -> list[SourceEntry]:
    """Pair `{split}/<stem>.png|jpg` with `{split}annot/<stem>.png` (sorted by stem)."""
    return paired_folder_entries(root / split, root / f"{split}annot", CAMVID_LUT,
                                 what=f"CamVid split {split!r}", list_file=root / f"{split}.txt")


def build_camvid(root: str | os.PathLike, split: str, resize=None,
                 name: str = "camvid") -> SegmentationSource:
    """`split` is a split name ("train", "val", "test") or a path to a list file."""
    root = Path(root)
    if is_list_file(split):
        entries = camvid_entries_from_list(root, split)
    elif (root / f"{split}.txt").is_file():
        entries = camvid_entries_from_list(root, root / f"{split}.txt")
    else:
        entries = camvid_entries_from_folders(root, split)
    return SegmentationSource(root, CAMVID_CLASSES, entries, resize=resize, name=name)


def is_list_file(split: str | os.PathLike) -> bool:
    """A split given as a path (ends with .txt or contains a directory part) is a list file."""
    text = str(split)
    return text.endswith(".txt") or os.sep in text or "/" in text
