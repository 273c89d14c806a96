"""What every acquisition strategy is: per-pixel scores (higher = more worth labelling) from the
model's pass over an image, which `query.scoring.region_scores` averages per region and
`query.scoring.select` ranks. One strategy per module; `query.strategies` is the registry."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

# What a strategy reads from the pass over an image (Strategy.needs):
PREDICTION = "prediction"  # the plain (noise-free) softmax, (N, C, H, W): the one the pseudo labels use
MC_SAMPLES = "mc_samples"  # query.mc_passes softmax outputs with the student's noise on, (T, N, C, H, W)
NOTHING = "nothing"        # no model output: the scores are drawn at selection time (random)


def log_classes(num_classes: int) -> float:
    """The entropy of the uniform distribution: the top of entropy-like scores."""
    return float(math.log(num_classes))


def one(num_classes: int) -> float:
    return 1.0


@dataclass(frozen=True)
class Strategy:
    """One acquisition function: a registry entry (each strategy module defines its `STRATEGY`).
    A strategy that reads no model (random) subclasses it and overrides `selection_scores` and
    `panel_map` instead of giving `pixel_fn`."""

    name: str                    # the value of query.strategy
    needs: str                   # PREDICTION, MC_SAMPLES or NOTHING
    map_title: str               # title of the query panel's map half
    bar_label: str               # label of its colour bar
    max_score: Callable[[int], float]  # num_classes -> the largest per-pixel score
    pixel_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    # The panels' colour scale: "fixed" (0 .. max_score, comparable across cycles) or "observed"
    # (0 .. the largest value among the query's pictured maps), for a score whose typical values
    # are far below its maximum (BALD's mutual information: hundredths of a nat under log C).
    panel_scale: str = "fixed"

    def score_max(self, num_classes: int) -> float:
        """The largest per-pixel score: the fixed top of the panels' colour scale, so panels of
        different cycles and images compare."""
        return self.max_score(num_classes)

    def pixel_scores(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) softmax (PREDICTION) or (T, N, C, H, W) noisy samples (MC_SAMPLES) ->
        (N, H, W) scores on the same device, floating point."""
        if self.pixel_fn is None:
            raise NotImplementedError(f"strategy {self.name!r} reads no model output")
        return self.pixel_fn(probs)

    def selection_scores(self, pass_scores: np.ndarray, seed: int) -> np.ndarray:
        """(N, gh, gw) region scores the selection ranks: by default the region means of
        `pixel_scores` computed in the pass. `seed` is the stage's (cfg.seed * 1000 + stage)."""
        return pass_scores

    def panel_map(self, pixel_map: np.ndarray | None, cell_scores: np.ndarray, grid) -> np.ndarray:
        """(H, W) values the query panel draws in [0, score_max] for one image: by default the
        pixel scores kept from the pass (`pixel_map`); `cell_scores` are its (gh, gw) selection scores."""
        if pixel_map is None:
            raise ValueError(f"strategy {self.name!r}: no per-pixel score map was kept for this image")
        return pixel_map


def check_probs(probs, dims: int, who: str) -> None:
    """The input checks every model strategy makes (one line naming the strategy)."""
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(probs).__name__}")
    shape = "(N, C, H, W)" if dims == 4 else "(T, N, C, H, W)"
    if probs.dim() != dims:
        raise ValueError(f"{who}: expected {shape} probabilities, got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"{who}: probabilities must be floating point, got {probs.dtype}")
