"""The one full pass over the data before a run directory exists: every image and label decoded
(a corrupt file, a size mismatch or a bad label value stops the run here, naming the file), and
the valid pixels of every region counted on the way."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core import distributed as dist_utils
from core.io import atomic_write_npz
from core.labels import IGNORE_INDEX

class _ScanDataset(Dataset):
    """Decodes every image and label once (catching corrupt files, size mismatches and bad label
    values before training) and counts valid pixels per grid cell on the way. A bad file's error
    travels back as text, so the main process can raise it as one clear message (a DataLoader
    worker's exception would arrive wrapped in a worker traceback)."""

    def __init__(self, src, grid):
        self.src, self.grid = src, grid

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        try:
            _, label = self.src.read(i)
        except (ValueError, OSError) as err:
            return i, None, str(err)
        valid = label != IGNORE_INDEX
        if self.grid is None:
            return i, np.array([[valid.sum()]], dtype=np.int64), None
        if label.shape != (self.grid.height, self.grid.width):
            return i, None, (f"{self.src.label_path(i)}: size {label.shape[0]}x{label.shape[1]} differs from "
                             f"the pool's {self.grid.height}x{self.grid.width} (set data.resize to make them equal)")
        return i, self.grid.cell_sums(valid).astype(np.int64), None


def scan_source(src, grid, ctx, workers: int) -> np.ndarray:
    """(N, gh, gw) valid-pixel counts per cell ((N, 1, 1) without a grid), checking every file.
    Each rank scans its shard; the result is gathered so every rank holds all of it. Reading
    through the source also fills its resized-image cache (data.cache_dir), once, in parallel."""
    mine = dist_utils.shard(list(range(len(src))), ctx)
    loader = DataLoader(torch.utils.data.Subset(_ScanDataset(src, grid), mine), batch_size=None,
                        num_workers=workers)
    found, errors = {}, []
    for i, counts, error in loader:
        if error is not None:
            errors.append(error)
        found[i] = counts
    merged, all_errors = {}, []
    for part, part_errors in dist_utils.all_gather_objects((found, errors), ctx):
        merged.update(part)
        all_errors += part_errors
    if all_errors:
        more = f" (and {len(all_errors) - 1} more bad files)" if len(all_errors) > 1 else ""
        raise ValueError(all_errors[0] + more)
    return np.stack([merged[i] for i in range(len(src))])


def load_scan(cache: Path, src) -> np.ndarray | None:
    """A previous scan of the same images, saved in the run directory, or None."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as data:
            ids, valid = list(data["ids"]), data["valid"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        # A cache of the scan (a pickled or damaged file is never trusted): the scan runs again.
        print(f"warning: {cache} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:120]}); "
              f"checking the images again")
        return None
    if ids != list(src.ids) or valid.ndim != 3 or len(valid) != len(ids) or valid.dtype.kind not in "iu":
        return None
    return valid


def save_scan(cache: Path, src, valid: np.ndarray) -> None:
    atomic_write_npz(cache, ids=np.array(src.ids), valid=valid)
