import cv2
import numpy as np
import pytest

from query.pool import RegionGrid
from query.visualize import (LABELED_TINT_ALPHA, LABELED_TINT_COLOR, OUTLINE_COLOR,
                             cell_border_mask, query_panel)

H, W, R = 50, 70, 16  # uneven: 4 x 5 cells


def make_inputs():
    grid = RegionGrid(height=H, width=W, region=(R, R))
    rng = np.random.default_rng(0)
    # Dark image: no pixel can be magenta by accident.
    image = rng.integers(0, 100, size=(H, W, 3), dtype=np.uint8)
    entropy = rng.random((H, W))
    labeled = np.zeros(grid.shape, dtype=bool)
    labeled[0, 0] = True
    new = np.zeros(grid.shape, dtype=bool)
    new[1, 2] = True
    new[3, 4] = True  # the small corner cell (2 x 6 px)
    return grid, image, entropy, labeled, new


def test_panel_shape_dtype_and_unchanged_pixels():
    grid, image, entropy, labeled, new = make_inputs()
    panel = query_panel(image, entropy, grid, labeled, new)
    assert panel.shape == (H, 2 * W, 3) and panel.dtype == np.uint8
    left = panel[:, :W]
    # a pixel in no labeled and no new cell is the image itself
    np.testing.assert_array_equal(left[20:32, 0:16], image[20:32, 0:16])
    # the labeled cell is blended towards the tint colour
    expected = np.rint((1 - LABELED_TINT_ALPHA) * image[5, 5].astype(float)
                       + LABELED_TINT_ALPHA * np.array(LABELED_TINT_COLOR))
    np.testing.assert_array_equal(left[5, 5], expected)


def test_outlines_drawn_exactly_on_new_cell_borders_in_both_halves():
    grid, image, entropy, labeled, new = make_inputs()
    panel = query_panel(image, entropy, grid, labeled, new, thickness=2)
    for half in (panel[:, :W], panel[:, W:]):
        is_outline = (half == OUTLINE_COLOR).all(axis=-1)
        # cell (1, 2) covers rows 16..31, cols 32..47: its 2-pixel-wide ring, computed by hand
        ring = np.zeros((H, W), dtype=bool)
        ring[16:32, 32:48] = True
        ring[18:30, 34:46] = False
        # the 2 x 6 corner cell (rows 48..49, cols 64..69) is all border
        ring[48:50, 64:70] = True
        # JET has no magenta, so on the entropy side too exactly the ring is magenta
        np.testing.assert_array_equal(is_outline, ring)


def test_entropy_half_is_jet_colour_map_in_rgb():
    grid, image, entropy, labeled, new = make_inputs()
    no_new = np.zeros_like(new)
    panel = query_panel(image, entropy, grid, labeled, no_new, score_max=1.0)
    gray = np.clip(np.rint(entropy * 255), 0, 255).astype(np.uint8)
    expected = cv2.applyColorMap(gray, cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    np.testing.assert_array_equal(panel[:, W:], expected)


def test_cell_border_mask_matches_loop_over_cells():
    grid = RegionGrid(height=H, width=W, region=(R, R))
    mask = cell_border_mask(grid, thickness=3)
    expected = np.zeros((H, W), dtype=bool)
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            rows, cols = grid.cell_slices(r, c)
            block = np.ones((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
            block[3:-3, 3:-3] = False
            expected[rows, cols] = block
    np.testing.assert_array_equal(mask, expected)


def test_panel_input_errors():
    grid, image, entropy, labeled, new = make_inputs()
    with pytest.raises(ValueError, match="previously labeled"):
        query_panel(image, entropy, grid, labeled | new, new)
    with pytest.raises(ValueError, match="image must be uint8"):
        query_panel(image.astype(np.float32), entropy, grid, labeled, new)
    with pytest.raises(ValueError, match="scores has shape"):
        query_panel(image, entropy[:-1], grid, labeled, new)
    with pytest.raises(ValueError, match="new_cells"):
        query_panel(image, entropy, grid, labeled, new[:-1])
