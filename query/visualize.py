"""Picture of one active-learning query: which cells were labeled before, which were just queried.

Panel layout (RGB, uint8, H x 2W): left the image with previously labeled cells tinted green and
newly queried cells outlined in magenta; right the map of the strategy's per-pixel scores (JET
colour map; entropy, margin, ... : query/strategies/) with the same outlines. Magenta and green are the same in RGB and BGR order, so the panel reads correctly even if
a caller writes it with cv2 without converting; JET contains no magenta, so outlines stay visible.
`annotation_preview` is the left half with everything outside the new cells dimmed: what a human
annotator is asked to label.
"""
from __future__ import annotations

import cv2
import numpy as np

from query.pool import RegionGrid

OUTLINE_COLOR = (255, 0, 255)  # magenta
LABELED_TINT_COLOR = (0, 255, 0)  # green
LABELED_TINT_ALPHA = 0.35


def cell_border_mask(grid: RegionGrid, thickness: int) -> np.ndarray:
    """(H, W) bool: pixels within ``thickness`` of the border of the cell they belong to."""
    if thickness < 1:
        raise ValueError(f"cell_border_mask: thickness must be >= 1, got {thickness}")
    rh, rw = grid.region
    rows = np.arange(grid.height)
    cols = np.arange(grid.width)
    # Distance of each pixel row/column to the nearest edge of its own (possibly smaller) cell.
    row_offset = rows % rh
    row_size = np.minimum(rh, grid.height - (rows // rh) * rh)
    col_offset = cols % rw
    col_size = np.minimum(rw, grid.width - (cols // rw) * rw)
    row_edge = np.minimum(row_offset, row_size - 1 - row_offset) < thickness
    col_edge = np.minimum(col_offset, col_size - 1 - col_offset) < thickness
    return row_edge[:, None] | col_edge[None, :]


def query_panel(image: np.ndarray, scores, grid: RegionGrid, labeled_cells: np.ndarray,
                new_cells: np.ndarray, score_max: float | None = None,
                thickness: int = 2) -> np.ndarray:
    """Side-by-side RGB panel (H, 2W, 3) uint8 of a query; see the module docstring.

    ``scores`` is the (H, W) per-pixel score map the strategy ranked by. ``labeled_cells`` are
    the cells labeled *before* this query and must not overlap ``new_cells``. ``score_max`` fixes
    the colour scale (the strategy's maximum, e.g. log(num_classes) for entropy) so panels of
    different cycles compare; by default each panel is scaled to its own maximum.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (grid.height, grid.width, 3):
        raise ValueError(f"query_panel: image must be uint8 ({grid.height}, {grid.width}, 3), "
                         f"got dtype {image.dtype} shape {image.shape}")
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (grid.height, grid.width):
        raise ValueError(f"query_panel: scores has shape {scores.shape}, expected "
                         f"({grid.height}, {grid.width})")
    if not np.isfinite(scores).all():
        raise ValueError("query_panel: scores contain NaN or inf")
    left = region_overlay(image, grid, labeled_cells, new_cells, thickness)

    scale = float(scores.max()) if score_max is None else float(score_max)
    if scale < 0:
        raise ValueError(f"query_panel: score_max must be >= 0, got {score_max!r}")
    normalised = scores / scale if scale > 0 else np.zeros_like(scores)
    gray = np.clip(np.rint(normalised * 255.0), 0, 255).astype(np.uint8)
    right = cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)

    right[grid.expand(new_cells) & cell_border_mask(grid, thickness)] = OUTLINE_COLOR
    return np.concatenate([left, right], axis=1)


def region_overlay(image: np.ndarray, grid: RegionGrid, labeled_cells: np.ndarray,
                   new_cells: np.ndarray, thickness: int = 2) -> np.ndarray:
    """(H, W, 3) uint8: the image, previously labeled cells tinted green, new cells outlined in
    magenta (the left half of `query_panel`)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (grid.height, grid.width, 3):
        raise ValueError(f"region_overlay: image must be uint8 ({grid.height}, {grid.width}, 3), "
                         f"got dtype {image.dtype} shape {image.shape}")
    for name, cells in (("labeled_cells", labeled_cells), ("new_cells", new_cells)):
        cells = np.asarray(cells)
        if cells.dtype != bool or cells.shape != grid.shape:
            raise ValueError(f"region_overlay: {name} must be bool {grid.shape}, got dtype "
                             f"{cells.dtype} shape {cells.shape}")
    labeled_cells, new_cells = np.asarray(labeled_cells), np.asarray(new_cells)
    if (labeled_cells & new_cells).any():
        raise ValueError("region_overlay: a newly queried cell is also marked as previously labeled; "
                         "pass the labeled cells from before the query")
    out = image.astype(np.float32)
    tint = grid.expand(labeled_cells)
    out[tint] = ((1.0 - LABELED_TINT_ALPHA) * out[tint]
                 + LABELED_TINT_ALPHA * np.asarray(LABELED_TINT_COLOR, dtype=np.float32))
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out[grid.expand(new_cells) & cell_border_mask(grid, thickness)] = OUTLINE_COLOR
    return out


def annotation_preview(image: np.ndarray, grid: RegionGrid, labeled_cells: np.ndarray,
                       new_cells: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W, 3) uint8 for a human annotator: `region_overlay` with every pixel outside the new
    cells at half brightness, so the regions to label stand out."""
    out = region_overlay(image, grid, labeled_cells, new_cells, thickness)
    outside = ~grid.expand(np.asarray(new_cells))
    out[outside] = out[outside] // 2
    return out
