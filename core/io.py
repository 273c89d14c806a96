"""Crash-safe writes: every file of a run is written to a temporary name, flushed, then renamed
into place with os.replace, so a killed process leaves either the old file or the new one, never
half of one (`atomic_path`, and the `atomic_write_*` helpers built on it). A folder is written the
same way, whole (`atomic_folder`). Temporaries are named `.<name>.tmp-<host>-<pid>`: unique to
the writing process, even on nodes that share a file system, and recognised by
`remove_stale_temporaries` (and al/guard.py) as leftovers of a killed writer."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from core.errors import InputError


class WriteFailed(OSError):
    """A run file could not be written (full disk, no permission): one line naming it. The file
    it would have replaced is unchanged, so a checkpoint written before is still the last good one.
    `reason`: the operating system's words alone (e.g. "No space left on device")."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = message if reason is None else reason


def temporary_name(name: str) -> str:
    """The name a writer of `name` writes under until it is complete."""
    return f".{name}.tmp-{socket.gethostname()}-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success fsync it and move it over `path`.
    `durable=False` skips the fsync, for files that can always be rebuilt (a cache): a file torn
    by a power cut must then be detected when it is read."""
    from core import faults
    path = Path(path)
    tmp = path.with_name(temporary_name(path.name))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield str(tmp)
        faults.disk_full(path)  # test hook: this write fails as on a full disk
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        faults.reached(f"before_replace{path.suffix}")  # e.g. killed while saving a .pth
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, WriteFailed):
            raise
        reason = str(err.strerror or err)
        raise WriteFailed(f"cannot write {path}: {reason} (nothing there was replaced: the last good checkpoint "
                          f"is kept; free space or fix permissions, then run the same command again to resume)",
                          reason) from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, temporary: str | None = None, replace: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside `path`; when the block succeeds it is renamed to `path`, so
    `path` appears complete or not at all; on any failure it is removed.

    By default the folder is `temporary_name(...)`, unique to this process: several processes may
    write the same folder at once, and the first rename wins (os.rename replaces only a missing or
    empty folder: the others get an OSError, and may accept the winner's folder). `temporary`
    names it instead, for a folder one process at a time writes (under the run lock). Either way a
    folder of that name can only be a killed writer's leftover, and is removed first.
    `replace`: an existing `path` is deleted just before the rename."""
    path = Path(path)
    tmp = path.with_name(temporary or temporary_name(path.name))
    if tmp.exists() or tmp.is_symlink():
        _remove(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        yield tmp
        if replace and path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


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


def atomic_write_npz(path, *, durable: bool = True, compressed: bool = False, **arrays) -> None:
    """np.savez (np.savez_compressed when `compressed`) to exactly `path` (through a file handle,
    so numpy appends no `.npz`). `durable`: as for atomic_path."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def flat_name(image_id: str) -> str:
    """An image id as one file-name component ('aachen/aachen_000000' -> 'aachen__aachen_000000':
    Cityscapes ids contain '/'). Every per-image file of a run is named with it."""
    return image_id.replace("/", "__")


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the `.name.tmp-...` files and folders a killed writer left under `folder` (they never
    became real files). Returns how many."""
    count = 0
    for tmp in sorted(Path(folder).rglob(".*.tmp-*")):  # a folder before what it holds
        if tmp.exists() or tmp.is_symlink():  # not inside a leftover folder removed just before
            _remove(tmp)
            count += 1
    return count


def writable_folder(path: str | os.PathLike) -> Path:
    """`path`, checked to be a folder that is there, or can be made, and written into (the nearest
    part of it that exists must be a writable folder), else InputError. Checked before long work
    whose results go there, so they are not lost at its end."""
    path = parent = Path(path)
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{path}: {parent} is not writable")
    return path


def printable(path) -> str:
    """A path as text that can always be printed: bytes that are not UTF-8 (kept by Python as
    surrogate escapes) are shown as \\xNN instead of making print() raise."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
