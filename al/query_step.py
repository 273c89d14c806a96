"""The parts of a query stage (paper Sec. 3.2) that need no run state: which regions to ask for,
decided from the model's scores and the pool alone; the panels that show a person what was asked;
the TensorBoard shares of the classes the answers held. `Experiment.query` puts them in order
around the oracle."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.io import atomic_write_png, flat_name
from engine.figures import query_figure
from query import scoring
from query.pool import LabelPool, RegionGrid
from query.strategies import get_strategy
from query.visualize import query_panel


def select_regions(query_cfg, grid: RegionGrid, pool: LabelPool, scored: dict, stage_seed: int):
    """(new cells, budget, the region scores ranked) of one query. Only the scores and the pool
    decide, never the labels of unlabeled images, which a real query step does not have. The same
    on every rank: the scores are gathered, and random's are drawn from `stage_seed`
    (cfg.seed * 1000 + stage index)."""
    q, n = query_cfg, len(pool)
    eligible = scoring.eligible_cells(pool.cells, scored["has_scores"])
    if q.selection == "per_image":
        count, budget = q.regions_per_image, q.regions_per_image * n
    else:  # global: query.budget_pct of the pool's pixels, in whole regions
        cell_area = q.region_size[0] * q.region_size[1]
        count = budget = int(q.budget_pct / 100 * n * grid.height * grid.width // cell_area)
    scores = get_strategy(q.strategy).selection_scores(scored["scores"], seed=stage_seed)
    return scoring.select(scores, eligible, q.selection, count), budget, scores


def write_query_panels(folder: Path, strategy_name: str, src, grid: RegionGrid, pool: LabelPool, new: np.ndarray,
                       scored: dict, scores: np.ndarray, vis_images: int, show) -> None:
    """`folder`/<image>.png for the first `vis_images` scored images: the image with the regions
    labelled before and those queried now, beside the strategy's map and its colour bar. The bar
    runs from 0 to the strategy's maximum, the same for every cycle; for a strategy whose panel
    scale is "observed", to the largest value of this query's pictured maps. `show(image_id,
    panel)` also receives each panel (TensorBoard)."""
    strategy = get_strategy(strategy_name)
    pictured = np.flatnonzero(scored["has_scores"])[:vis_images].tolist()
    maps = {i: strategy.panel_map(scored["maps"][i].astype(np.float32) if i in scored["maps"] else None,
                                  scores[i], grid) for i in pictured}
    top = strategy.score_max(src.num_classes)
    if strategy.panel_scale == "observed" and maps:
        top = max(float(max(v.max() for v in maps.values())), 1e-6)  # all-zero maps: still a scale
    for i, values in maps.items():
        image, _ = src.read(i)
        panel = query_figure(query_panel(image, values, grid, pool.cells[i], new[i], score_max=top),
                             top, strategy.map_title, strategy.bar_label)
        atomic_write_png(Path(folder) / f"{flat_name(src.ids[i])}.png", panel)
        show(src.ids[i], panel)


def class_pixel_shares(stats: dict) -> dict[str, float]:
    """TensorBoard scalars: each class's share (%) of the revealed and of the pool's labeled pixels."""
    shares = {}
    for key, tag in (("queried_class_pixels", "revealed"), ("pool_class_pixels", "pool")):
        total = max(sum(stats[key].values()), 1)
        shares.update({f"query_{tag}_pct/{c}": 100.0 * v / total for c, v in stats[key].items()})
    return shares
