"""A disk cache of images and labels already decoded, label-mapped and resized to the working size.

Why: Cityscapes active learning reads 1024x2048 PNGs and resizes them to 688x688 on every
draw; decoding and area-resizing one pair costs ~100-150 ms of one core, more than a GPU step
takes per image. The cached pair is stored raw (uint8, ~1.9 MB at 688x688) and reads back in a
few milliseconds.

Only pairs that the working size shrinks are cached (their label PNG's header says how large
they are): an image read at its own size, or enlarged, costs little more to decode than the
raw copy would to read, and would only fill the disk.

Layout: `<folder>/<h>x<w>/<sha1 of the two source paths and the label table>.npz` holding
`image` (h, w, 3), `label` (h, w) (train ids, after the dataset's label table) and `key`.
The key names the two source files with their size and modification time, the working
size, the label table and CACHE_VERSION: a source file that changed (or was only touched)
makes the key differ, and the entry is rebuilt in place. An entry that does not load (the
zip container checks each array's CRC-32 as it is read: a flipped byte or a truncated file
fails there) or has the wrong shapes is rebuilt too, with a warning: a cached pair is never
used unless it came from the current files.

Rank-safe without coordination: every entry is written to a temporary name unique to the
writing process (and host) and moved into place with `os.replace` (core/io.py `atomic_path`),
so processes (ranks, loader workers) that build the same entry at the same time each install a
complete file, and all of them are the same bytes. The engine's data scan builds every entry
once before training (each rank its shard); later reads only check the key. Entries are not
fsynced: they can always be rebuilt, and a file torn by a power cut fails its checks and is
rebuilt. A writer killed mid-write leaves a `.<name>.tmp-<host>-<pid>` file, which is never read.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from core.io import WriteFailed, atomic_write_npz

# Bump when reading, label mapping or resizing changes what a source read returns, so entries
# written by older code are rebuilt instead of used.
CACHE_VERSION = 2  # 2: labels decoded by datasets/decode.py (1-bit PNGs give 0/1, palette PNGs their indices)

Pair = tuple[np.ndarray, np.ndarray]


def _stat(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: str) -> tuple[int, int] | None:
    """(H, W) from a PNG's header (its first 24 bytes: no decoding); None if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


class ResizedCache:
    """Entries for one working size `(h, w)` under `folder / "<h>x<w>"`."""

    def __init__(self, folder: str | os.PathLike, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))
        self.folder = Path(folder) / f"{self.size[0]}x{self.size[1]}"

    def __repr__(self) -> str:
        return f"ResizedCache({str(self.folder)!r})"

    def entry_path(self, image_path: str, label_path: str, label_lut: np.ndarray) -> Path:
        h = hashlib.sha1()
        for part in (os.path.abspath(image_path), os.path.abspath(label_path)):
            h.update(os.fsencode(part) + b"\0")  # any file name, UTF-8 or not
        h.update(np.ascontiguousarray(label_lut).tobytes())
        return self.folder / f"{h.hexdigest()}.npz"

    def key(self, image_path: str, label_path: str, label_lut: np.ndarray) -> str:
        """What the entry must have been built from; stat() of both files, so it is cheap."""
        return json.dumps({
            "version": CACHE_VERSION, "size": list(self.size),
            "image": [os.path.abspath(image_path), *_stat(image_path)],
            "label": [os.path.abspath(label_path), *_stat(label_path)],
            "lut": hashlib.sha1(np.ascontiguousarray(label_lut).tobytes()).hexdigest(),
        }, sort_keys=True)

    def lookup(self, path: Path, key: str) -> tuple[Pair | None, str]:
        """(pair, "hit") for a valid entry, else (None, "missing" | "stale" | "corrupt: why")."""
        if not path.is_file():
            return None, "missing"
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key = str(data["key"])
                image, label = data["image"], data["label"]  # zipfile verifies their CRC-32
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            # What np.load raises on a truncated or overwritten file: rebuilt, with a warning.
            return None, f"corrupt: {type(err).__name__}: {err}"
        if stored_key != key:
            return None, "stale"
        h, w = self.size
        if (image.dtype != np.uint8 or label.dtype != np.uint8 or image.shape != (h, w, 3)
                or label.shape != (h, w)):
            return None, f"corrupt: arrays {image.dtype} {image.shape}, {label.dtype} {label.shape}"
        return (image, label), "hit"

    def read(self, image_path: str, label_path: str, label_lut: np.ndarray,
             build: Callable[[], Pair]) -> Pair:
        """The cached pair, or `build()`'s pair stored (and returned) when there is none valid.
        `build` raises on bad source files exactly as an uncached read does."""
        try:
            key = self.key(image_path, label_path, label_lut)
        except FileNotFoundError:
            return build()  # raises the reader's own "file not found: <path>" message
        path = self.entry_path(image_path, label_path, label_lut)
        pair, state = self.lookup(path, key)
        if pair is not None:
            return pair
        if state.startswith("corrupt"):
            warnings.warn(f"resized-image cache: rebuilding {path} ({state})", stacklevel=2)
        image, label = build()
        if image.shape[:2] != self.size or label.shape != self.size:
            raise AssertionError(f"cache build returned {image.shape}/{label.shape}, expected {self.size}")
        self._write(path, key, image, label)
        return image, label

    def _write(self, path: Path, key: str, image: np.ndarray, label: np.ndarray) -> None:
        image, label = np.ascontiguousarray(image), np.ascontiguousarray(label)
        try:  # the temporary is unique per host and process: ranks on several nodes may share the folder
            atomic_write_npz(path, durable=False, image=image, label=label, key=np.array(key))
        except WriteFailed as err:
            raise OSError(f"resized-image cache: cannot write {path} ({err.reason}); "
                          f"set data.cache_dir to a writable folder, or null to read without "
                          f"a cache") from None
