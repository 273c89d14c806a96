"""Crash-safe file writes: every file of a run is written to a temporary name, flushed, then
renamed into place with os.replace, so a killed process leaves either the old file or the new
one, never half of one."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np


class WriteFailed(OSError):
    """A run file could not be written (full disk, no permission): one line naming it. The file
    it would have replaced is unchanged, so a checkpoint written before is still the last good one."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success fsync it and move it over `path`."""
    from core import faults
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield str(tmp)
        faults.disk_full(path)  # test hook: this write fails as on a full disk
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        faults.reached(f"before_replace{path.suffix}")  # e.g. killed while saving a .pth
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, WriteFailed):
            raise
        raise WriteFailed(f"cannot write {path}: {err.strerror or err} (nothing there was replaced: the last "
                          f"good checkpoint is kept; free space or fix permissions, then run the same command "
                          f"again to resume)") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_with(path, writer: Callable[[str], None]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_write_bytes(path, data: bytes) -> None:
    _write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_png(path, array: np.ndarray) -> None:
    """uint8 (H, W) or RGB (H, W, 3) array -> PNG."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    atomic_write_bytes(path, buf.tobytes())


def atomic_write_index_png(path, ids: np.ndarray, palette) -> None:
    """(H, W) uint8 class ids -> palette ("P") PNG: the stored values are the ids (every reader of
    label PNGs, datasets/decode.py, gets them back), and image viewers show the data set's colours
    (`palette`: (C, 3) uint8; 255 = void is black)."""
    from PIL import Image
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype != np.uint8:
        raise ValueError(f"atomic_write_index_png: need (H, W) uint8 ids, got {ids.shape} {ids.dtype}")
    colours = np.zeros((256, 3), np.uint8)
    palette = np.asarray(palette, np.uint8)[:255]
    colours[:len(palette)] = palette
    image = Image.fromarray(ids, mode="P")
    image.putpalette(colours.ravel().tolist())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def atomic_write_npz(path, **arrays) -> None:
    """np.savez to exactly `path` (through a file handle, so numpy appends no `.npz`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def flat_name(image_id: str) -> str:
    """An image id as one file-name component ('aachen/aachen_000000' -> 'aachen__aachen_000000':
    Cityscapes ids contain '/'). Every per-image file of a run is named with it."""
    return image_id.replace("/", "__")


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete `.name.tmp-PID` leftovers of a killed writer (they never became real files)."""
    count = 0
    for tmp in Path(folder).rglob(".*.tmp-*"):
        tmp.unlink()
        count += 1
    return count


def printable(path) -> str:
    """A path as text that can always be printed: bytes that are not UTF-8 (kept by Python as
    surrogate escapes) are shown as \\xNN instead of making print() raise."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
