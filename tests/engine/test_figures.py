"""engine/figures.py: the query figure holds the panel enlarged (nearest, an integer factor) under its
titles, the legend and the colour bar below."""
from __future__ import annotations

import numpy as np


def test_the_query_figure_holds_the_panel_enlarged_under_its_titles():
    from engine.figures import enlarge, query_figure
    from query.pool import RegionGrid
    from query.visualize import query_panel
    grid = RegionGrid(48, 64, (16, 16))
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    new = np.zeros(grid.shape, bool)
    new[1, 2] = True
    panel = query_panel(image, np.full((48, 64), 0.5), grid, np.zeros(grid.shape, bool), new, score_max=1.0)
    figure, big = query_figure(panel, 1.0, "per-pixel entropy", "entropy (nats)"), enlarge(panel)
    assert big.shape[0] >= 360 and big.shape[0] % 48 == 0
    np.testing.assert_array_equal(big[::big.shape[0] // 48, ::big.shape[0] // 48], panel)  # nearest, integer factor
    half = big.shape[1] // 2
    np.testing.assert_array_equal(figure[30:30 + big.shape[0], :half], big[:, :half])     # image column under its title
    np.testing.assert_array_equal(figure[30:30 + big.shape[0], half + 6:2 * half + 6], big[:, half:])  # entropy column
    assert figure.shape[0] > 30 + big.shape[0] + 40  # legend and colour bar below
