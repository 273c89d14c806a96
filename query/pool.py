"""Which regions of which training image are human-labeled: the active-learning label pool.

An image is split into a grid of rectangular cells (``RegionGrid``); the pool keeps one bit per
cell per image (``LabelPool.cells``). A pool is immutable: ``reveal`` returns the next cycle's pool,
so the pool of every finished cycle can be saved and compared with the next one. Pixel fractions are
computed from exact integer cell areas, so uneven edge cells (e.g. 688 px split into 43 px cells
divides evenly, 50 px into 16 px cells does not) are counted correctly.
"""
from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from typing import Sequence

import numpy as np
import torch

from core.io import atomic_write_npz

# Bumped whenever the on-disk layout changes, so an old file fails loudly instead of misreading.
POOL_FORMAT_VERSION = 1


class RegionGrid:
    """A grid of ``region = (rh, rw)`` pixel cells over an ``height x width`` image.

    The grid has ``ceil(H / rh) x ceil(W / rw)`` cells; the last row/column of cells is smaller
    when the image size is not a multiple of the region size.
    """

    def __init__(self, height: int, width: int, region: tuple[int, int]):
        if len(region) != 2:
            raise ValueError(f"RegionGrid: region must be (rows, cols), got {region!r}")
        for name, value in (("height", height), ("width", width),
                            ("region rows", region[0]), ("region cols", region[1])):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"RegionGrid: {name} must be a positive integer, got {value!r}")
        self.height = int(height)
        self.width = int(width)
        self.region = (int(region[0]), int(region[1]))
        rh, rw = self.region
        self.shape = (math.ceil(self.height / rh), math.ceil(self.width / rw))
        row_sizes = np.minimum(rh, self.height - rh * np.arange(self.shape[0], dtype=np.int64))
        col_sizes = np.minimum(rw, self.width - rw * np.arange(self.shape[1], dtype=np.int64))
        self.cell_areas = np.outer(row_sizes, col_sizes).astype(np.int64)
        self.cell_areas.setflags(write=False)

    def __repr__(self) -> str:
        return f"RegionGrid(height={self.height}, width={self.width}, region={self.region})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RegionGrid) and (self.height, self.width, self.region)
                == (other.height, other.width, other.region))

    def __hash__(self) -> int:
        return hash((self.height, self.width, self.region))

    def cell_slices(self, row: int, col: int) -> tuple[slice, slice]:
        """Pixel slices (rows, cols) of cell ``(row, col)``."""
        rh, rw = self.region
        return (slice(row * rh, min((row + 1) * rh, self.height)),
                slice(col * rw, min((col + 1) * rw, self.width)))

    def expand(self, cells: np.ndarray) -> np.ndarray:
        """Cell mask ``(..., gh, gw)`` -> pixel mask ``(..., H, W)`` (bool)."""
        cells = np.asarray(cells)
        if cells.shape[-2:] != self.shape:
            raise ValueError(f"RegionGrid.expand: cells have shape {cells.shape}, "
                             f"expected (..., {self.shape[0]}, {self.shape[1]})")
        rh, rw = self.region
        pixels = np.repeat(np.repeat(cells.astype(bool), rh, axis=-2), rw, axis=-1)
        return pixels[..., : self.height, : self.width]

    def cell_sums(self, pixels):
        """Exact per-cell sums of ``(..., H, W)`` -> ``(..., gh, gw)``; numpy in, numpy out; torch likewise.

        Zero padding up to whole cells then one reshape + sum: no Python loop over cells, and the
        padded zeros do not change any sum. Divide by ``cell_areas`` for means.
        """
        if tuple(pixels.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"RegionGrid.cell_sums: input has shape {tuple(pixels.shape)}, "
                             f"expected (..., {self.height}, {self.width})")
        gh, gw = self.shape
        rh, rw = self.region
        pad_h, pad_w = gh * rh - self.height, gw * rw - self.width
        lead = tuple(pixels.shape[:-2])
        if isinstance(pixels, torch.Tensor):
            if pixels.dtype == torch.bool:
                pixels = pixels.to(torch.int64)
            padded = torch.nn.functional.pad(pixels, (0, pad_w, 0, pad_h))
            return padded.reshape(*lead, gh, rh, gw, rw).sum(dim=(-3, -1))
        pixels = np.asarray(pixels)
        if pixels.dtype == bool:
            pixels = pixels.astype(np.int64)
        padded = np.pad(pixels, [(0, 0)] * len(lead) + [(0, pad_h), (0, pad_w)])
        return padded.reshape(*lead, gh, rh, gw, rw).sum(axis=(-3, -1))


def _as_cell_mask(cells, expected_shape: tuple[int, ...], what: str) -> np.ndarray:
    if isinstance(cells, torch.Tensor):
        cells = cells.detach().cpu().numpy()
    cells = np.asarray(cells)
    if cells.dtype != bool:
        raise ValueError(f"{what}: expected a bool cell mask, got dtype {cells.dtype}")
    if cells.shape != expected_shape:
        raise ValueError(f"{what}: cell mask has shape {cells.shape}, expected {expected_shape}")
    return cells


class LabelPool:
    """Immutable record of the labeled cells of every image at one active-learning cycle."""

    def __init__(self, ids: Sequence[str], grid: RegionGrid, cells, cycle: int = 0,
                 history: list[dict] | None = None):
        ids = [str(i) for i in ids]
        if not ids:
            raise ValueError("LabelPool: the image id list is empty")
        seen: set[str] = set()
        for image_id in ids:
            if image_id in seen:
                raise ValueError(f"LabelPool: image id {image_id!r} appears twice")
            seen.add(image_id)
        if not isinstance(grid, RegionGrid):
            raise TypeError(f"LabelPool: grid must be a RegionGrid, got {type(grid).__name__}")
        if isinstance(cycle, bool) or not isinstance(cycle, (int, np.integer)) or cycle < 0:
            raise ValueError(f"LabelPool: cycle must be a non-negative integer, got {cycle!r}")
        self._ids = tuple(ids)
        self.grid = grid
        cells = _as_cell_mask(cells, (len(ids), *grid.shape), "LabelPool")
        self._cells = cells.copy()
        self._cells.setflags(write=False)  # a pool never changes; reveal() makes a new one
        self.cycle = int(cycle)
        if history is None:
            history = [{"cycle": self.cycle, "regions_added": int(self._cells.sum()),
                        "labeled_pixel_pct": 100.0 * self.labeled_pixel_fraction()}]
        self._history = [dict(entry) for entry in history]

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def initial(cls, ids: Sequence[str], grid: RegionGrid, fraction: float = 0.10,
                seed: int = 0) -> "LabelPool":
        """Cycle 0: ``round(fraction * N)`` whole images drawn with a seeded numpy Generator."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"LabelPool.initial: fraction must be in (0, 1], got {fraction!r}")
        num_images = len(ids)
        num_labeled = int(round(fraction * num_images))
        if num_labeled == 0:
            raise ValueError(f"LabelPool.initial: fraction {fraction} of {num_images} images "
                             "rounds to 0 labeled images")
        chosen = np.random.default_rng(seed).choice(num_images, size=num_labeled, replace=False)
        cells = np.zeros((num_images, *grid.shape), dtype=bool)
        cells[chosen] = True
        return cls(ids, grid, cells)

    @classmethod
    def from_labeled_ids(cls, ids: Sequence[str], grid: RegionGrid,
                         labeled_ids: Sequence[str]) -> "LabelPool":
        """Cycle 0 from a shipped split list: the listed images are fully labeled."""
        index = {str(image_id): i for i, image_id in enumerate(ids)}
        cells = np.zeros((len(ids), *grid.shape), dtype=bool)
        for image_id in labeled_ids:
            if str(image_id) not in index:
                raise ValueError(f"LabelPool.from_labeled_ids: labeled id {image_id!r} "
                                 "is not in the image list")
            if cells[index[str(image_id)]].any():
                raise ValueError(f"LabelPool.from_labeled_ids: labeled id {image_id!r} listed twice")
            cells[index[str(image_id)]] = True
        if not cells.any():
            raise ValueError("LabelPool.from_labeled_ids: the labeled id list is empty")
        return cls(ids, grid, cells)

    # ----- queries --------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def cells(self) -> np.ndarray:
        """(N, gh, gw) bool, read-only."""
        return self._cells

    @property
    def history(self) -> list[dict]:
        return [dict(entry) for entry in self._history]

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"LabelPool(images={len(self)}, grid={self.grid!r}, cycle={self.cycle}, "
                f"labeled_pixel_pct={100.0 * self.labeled_pixel_fraction():.3f})")

    def on_grid(self, grid: RegionGrid) -> "LabelPool":
        """The same labeled pixels on `grid`. A run without a query stage keeps whole-image pools
        (one cell per image); a query run that reuses its stages (init_from) refines them to its
        region grid: a labeled image has every cell labeled. Other moves are refused."""
        if grid == self.grid:
            return self
        if self.grid.shape != (1, 1) or (grid.height, grid.width) != (self.grid.height, self.grid.width):
            raise ValueError(f"LabelPool.on_grid: cannot move a pool on {self.grid!r} to {grid!r}; only a "
                             f"whole-image pool can be refined to a grid over images of the same size")
        cells_per_image = grid.shape[0] * grid.shape[1]
        cells = np.broadcast_to(self._cells, (len(self), *grid.shape))
        history = [{**entry, "regions_added": entry["regions_added"] * cells_per_image} for entry in self._history]
        return LabelPool(self._ids, grid, cells, self.cycle, history)

    def fully_labeled(self) -> list[int]:
        return np.flatnonzero(self._cells.all(axis=(1, 2))).tolist()

    def partially_labeled(self) -> list[int]:
        per_image = self._cells.any(axis=(1, 2)) & ~self._cells.all(axis=(1, 2))
        return np.flatnonzero(per_image).tolist()

    def unlabeled_cells_mask(self) -> np.ndarray:
        return ~self._cells

    def labeled_pixel_mask(self, index: int) -> np.ndarray:
        """(H, W) bool: the human-labeled pixels of image ``index``."""
        return self.grid.expand(self._cells[index])

    def labeled_pixel_fraction(self) -> float:
        """Exact: labeled pixels / all pixels, from integer cell areas (edge cells included)."""
        labeled = int((self._cells * self.grid.cell_areas).sum())
        return labeled / (len(self) * self.grid.height * self.grid.width)

    def labeled_valid_pixel_fraction(self, valid_counts) -> float:
        """Labeled non-void pixels / all non-void pixels; ``valid_counts`` (N, gh, gw) per cell."""
        if isinstance(valid_counts, torch.Tensor):
            valid_counts = valid_counts.detach().cpu().numpy()
        valid_counts = np.asarray(valid_counts)
        if valid_counts.shape != self._cells.shape:
            raise ValueError(f"labeled_valid_pixel_fraction: valid_counts has shape "
                             f"{valid_counts.shape}, expected {self._cells.shape}")
        if not np.issubdtype(valid_counts.dtype, np.integer):
            raise ValueError("labeled_valid_pixel_fraction: valid_counts must be integer pixel "
                             f"counts, got dtype {valid_counts.dtype}")
        if (valid_counts < 0).any() or (valid_counts > self.grid.cell_areas).any():
            raise ValueError("labeled_valid_pixel_fraction: valid_counts outside [0, cell area]")
        total = int(valid_counts.sum())
        if total == 0:
            raise ValueError("labeled_valid_pixel_fraction: the pool has no valid (non-void) pixels")
        return int(valid_counts[self._cells].sum()) / total

    # ----- growth ---------------------------------------------------------------------------
    def reveal(self, new_cells, budget: int) -> "LabelPool":
        """The next cycle's pool with ``new_cells`` labeled too; ``self`` is left unchanged."""
        new_cells = _as_cell_mask(new_cells, self._cells.shape, "LabelPool.reveal")
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
            raise ValueError(f"LabelPool.reveal: budget must be a non-negative integer, got {budget!r}")
        twice = new_cells & self._cells
        if twice.any():
            image, row, col = (int(v) for v in np.argwhere(twice)[0])
            raise ValueError(f"LabelPool.reveal: region queried twice: image {self._ids[image]!r} "
                             f"cell (row {row}, col {col}) is already labeled "
                             f"({int(twice.sum())} such cells in total)")
        added = int(new_cells.sum())
        if added > budget:
            raise ValueError(f"LabelPool.reveal: budget exceeded: {added} regions queried, "
                             f"budget is {budget}")
        grown = LabelPool(self._ids, self.grid, self._cells | new_cells, self.cycle + 1,
                          history=self._history)
        grown._history.append({"cycle": grown.cycle, "regions_added": added,
                               "labeled_pixel_pct": 100.0 * grown.labeled_pixel_fraction()})
        return grown

    def check_grows_from(self, previous: "LabelPool") -> None:
        """Raise unless ``self`` contains every labeled region of ``previous`` (same images, grid)."""
        if previous._ids != self._ids:
            raise ValueError("LabelPool.check_grows_from: the pools list different images")
        if previous.grid != self.grid:
            raise ValueError(f"LabelPool.check_grows_from: grid {self.grid!r} differs from "
                             f"the previous {previous.grid!r}")
        lost = previous._cells & ~self._cells
        if lost.any():
            image, row, col = (int(v) for v in np.argwhere(lost)[0])
            raise ValueError(f"LabelPool.check_grows_from: labeled regions shrank: image "
                             f"{self._ids[image]!r} cell (row {row}, col {col}) was labeled at "
                             f"cycle {previous.cycle} but not at cycle {self.cycle}")

    # ----- storage ----------------------------------------------------------------------------
    def save(self, path) -> None:
        """One ``.npz`` file (one bit per cell), written atomically (core/io.py ``atomic_path``)."""
        arrays = {
            "format_version": np.array(POOL_FORMAT_VERSION, dtype=np.int64),
            "cells_packed": np.packbits(self._cells.ravel()),
            "num_images": np.array(len(self), dtype=np.int64),
            "grid": np.array([self.grid.height, self.grid.width, *self.grid.region], dtype=np.int64),
            "cycle": np.array(self.cycle, dtype=np.int64),
            "ids": np.array(self._ids, dtype=np.str_),
            "history_json": np.array(json.dumps(self._history)),
        }
        atomic_write_npz(path, compressed=True, **arrays)

    @classmethod
    def load(cls, path) -> "LabelPool":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"label pool file not found: {path}")
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
            with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
                fields = {key: archive[key] for key in archive.files}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error,
                NotImplementedError) as err:
            # What a damaged zip raises: BadZipFile/EOFError (cut off), zlib.error (bad compressed
            # data), NotImplementedError (garbled header flags), ValueError (bad .npy header).
            raise ValueError(f"{path}: not a readable label pool file ({err})") from err
        try:
            return cls._from_fields(fields, path)
        except (ValueError, TypeError) as err:
            if path in str(err):
                raise
            raise ValueError(f"{path}: inconsistent label pool file ({err})") from err

    @classmethod
    def _from_fields(cls, fields: dict, path: str) -> "LabelPool":
        required = ("format_version", "cells_packed", "num_images", "grid", "cycle", "ids",
                    "history_json")
        missing = [key for key in required if key not in fields]
        if missing:
            raise ValueError(f"{path}: label pool file lacks {missing}")
        version = int(fields["format_version"])
        if version != POOL_FORMAT_VERSION:
            raise ValueError(f"{path}: label pool format {version}, this code reads "
                             f"{POOL_FORMAT_VERSION}")
        if fields["grid"].shape != (4,):
            raise ValueError(f"{path}: grid field must hold (height, width, rows, cols)")
        height, width, rh, rw = (int(v) for v in fields["grid"])
        grid = RegionGrid(height, width, (rh, rw))
        num_images = int(fields["num_images"])
        ids = [str(v) for v in fields["ids"]]
        if len(ids) != num_images:
            raise ValueError(f"{path}: {len(ids)} ids stored for {num_images} images")
        num_cells = num_images * grid.shape[0] * grid.shape[1]
        packed = fields["cells_packed"]
        if packed.dtype != np.uint8 or packed.size != (num_cells + 7) // 8:
            raise ValueError(f"{path}: cell bits have {packed.size} bytes, expected "
                             f"{(num_cells + 7) // 8}")
        cells = np.unpackbits(packed, count=num_cells).astype(bool)
        try:
            history = json.loads(str(fields["history_json"]))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: history is not valid JSON ({err})") from err
        return cls(ids, grid, cells.reshape(num_images, *grid.shape), int(fields["cycle"]), history)
