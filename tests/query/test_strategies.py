"""The acquisition strategies (query/strategies/) against numpy formulas (tests/helpers.py), random
against the old select_random's logic (re-implemented here), and the registry against the config's
list of `query.strategy` values. (The pass that scores images with them: tests/al/test_pseudo.py.)"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.config import ConfigError, load_config
from core.schema import SCHEMA
from query.pool import RegionGrid
from query.scoring import select
from query.strategies import STRATEGIES, get_strategy
from tests.helpers import numpy_bald, numpy_entropy, numpy_least_confidence, numpy_margin

C = 5


def hand_built_probs() -> np.ndarray:
    """(2, C, 3, 4) float64 probabilities with the corner cases spelled out: a one-hot pixel, a
    uniform one, an exact two-way tie, a tie for second place, and random softmax elsewhere."""
    rng = np.random.default_rng(3)
    logits = 2.5 * rng.standard_normal((2, C, 3, 4))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p[0, :, 0, 0] = [1, 0, 0, 0, 0]
    p[0, :, 0, 1] = 1 / C
    p[1, :, 2, 3] = [0.5, 0.5, 0, 0, 0]
    p[1, :, 1, 1] = [0.6, 0.2, 0.2, 0, 0]
    return p


# ------------------------------------------------------------------ each strategy's formula
@pytest.mark.parametrize("name, formula", [("entropy", numpy_entropy), ("margin", numpy_margin),
                                           ("least_confidence", numpy_least_confidence)])
def test_prediction_strategies_match_numpy_on_a_hand_built_map(name, formula):
    p = hand_built_probs()
    got = get_strategy(name).pixel_scores(torch.from_numpy(p)).numpy()
    assert got.shape == (2, 3, 4)
    np.testing.assert_allclose(got, formula(p), rtol=0, atol=1e-12)


def test_the_corner_pixels_by_hand():
    p = torch.from_numpy(hand_built_probs())
    entropy, margin, least = (get_strategy(n).pixel_scores(p) for n in ("entropy", "margin", "least_confidence"))
    assert entropy[0, 0, 0] == 0 and margin[0, 0, 0] == 0 and least[0, 0, 0] == 0    # one-hot: certain
    assert entropy[0, 0, 1].item() == pytest.approx(math.log(C))                     # uniform
    assert margin[0, 0, 1].item() == pytest.approx(1.0) and least[0, 0, 1].item() == pytest.approx(1 - 1 / C)
    assert margin[1, 2, 3].item() == 1.0 and least[1, 2, 3].item() == 0.5             # a two-way tie
    assert margin[1, 1, 1].item() == pytest.approx(0.6)                              # 1 - (0.6 - 0.2)


def test_bald_is_the_entropy_of_the_mean_minus_the_mean_entropy():
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((6, 2, C, 3, 4)) * np.array([0.5, 3.0])[None, :, None, None, None]
    samples = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    samples[:, 0, :, 0, 0] = 1 / C        # every pass agrees (uniform): nothing to learn, MI 0
    samples[:3, 1, :, 0, 0] = [1, 0, 0, 0, 0]  # half the passes say class 0, half class 1, each sure:
    samples[3:, 1, :, 0, 0] = [0, 1, 0, 0, 0]  # MI = H(mean) - 0 = log 2
    got = get_strategy("bald").pixel_scores(torch.from_numpy(samples)).numpy()
    np.testing.assert_allclose(got, numpy_bald(samples), rtol=0, atol=1e-12)
    assert got[0, 0, 0] == pytest.approx(0.0, abs=1e-12) and got[1, 0, 0] == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        get_strategy("bald").pixel_scores(torch.from_numpy(samples[:1]))


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence", "bald"])
def test_scores_lie_between_zero_and_the_strategys_maximum(name):
    strategy = get_strategy(name)
    p = torch.from_numpy(hand_built_probs())
    x = torch.stack([p, p.roll(1, dims=1), p.flip(1)]) if name == "bald" else p
    scores = strategy.pixel_scores(x)
    assert scores.min() >= 0 and scores.max() <= strategy.score_max(C) + 1e-12


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence"])
@pytest.mark.parametrize("classes", [2, 11, 19])
def test_the_uniform_prediction_reaches_the_strategys_maximum(name, classes):
    """The top of a panel's colour scale is a score a pixel can have: that of the uniform softmax."""
    uniform = torch.full((1, classes, 2, 2), 1.0 / classes, dtype=torch.float64)
    scores = get_strategy(name).pixel_scores(uniform)
    np.testing.assert_allclose(scores.numpy(), get_strategy(name).score_max(classes), rtol=0, atol=1e-12)


def test_the_panel_scale_is_the_strategys_maximum():
    assert get_strategy("entropy").score_max(11) == pytest.approx(math.log(11))
    assert get_strategy("bald").score_max(19) == pytest.approx(math.log(19))
    assert get_strategy("margin").score_max(11) == 1.0
    assert get_strategy("least_confidence").score_max(11) == pytest.approx(10 / 11)
    for name, strategy in STRATEGIES.items():
        words = name.replace("_", " ").split()[:1] + (["mutual"] if name == "bald" else [])
        assert any(w in strategy.bar_label for w in words), (name, strategy.bar_label)


# ------------------------------------------------------------------ the registry
def test_the_registry_refuses_an_unknown_name_and_agrees_with_the_config():
    with pytest.raises(ValueError, match="unknown strategy 'variance'.*known"):
        get_strategy("variance")
    assert set(SCHEMA["query"]["strategy"].choices) == set(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name and get_strategy(name) is strategy
    with pytest.raises(ConfigError, match="query.strategy.*'variance' is not one of"):
        load_config("demo", ["query.strategy=variance"])


# ------------------------------------------------------------------ random == the old select_random
def old_select_random(eligible, seed, k_per_image=None, n_total=None):
    """What select_random did, written out: a uniform key per cell from default_rng(seed); per
    image (or over the pool) the eligible cells with the lowest keys, ties to the lower index."""
    keys = np.random.default_rng(seed).random(eligible.shape)
    rows = eligible.shape[0] if k_per_image is not None else 1
    count = k_per_image if k_per_image is not None else n_total
    flat_keys, flat_ok = keys.reshape(rows, -1), eligible.reshape(rows, -1)
    out = np.zeros(flat_ok.shape, dtype=bool)
    for r in range(rows):
        ranked = sorted((i for i in range(flat_ok.shape[1]) if flat_ok[r, i]), key=lambda i: (flat_keys[r, i], i))
        out[r, ranked[:count]] = True
    return out.reshape(eligible.shape)


def eligibility_patterns(rng, shape):
    yield np.ones(shape, bool)
    yield np.zeros(shape, bool)
    for density in (0.05, 0.5, 0.9):
        yield rng.random(shape) < density
    some_full = rng.random(shape) < 0.7
    some_full[::2] = False  # fully labeled images: nothing eligible there
    yield some_full


def test_random_is_topk_on_minus_uniform_keys_exactly_as_select_random_picked():
    random = get_strategy("random")
    rng = np.random.default_rng(0)
    cases = 0
    for shape in [(1, 1, 1), (1, 2, 4), (3, 4, 5), (7, 12, 16), (2, 24, 32)]:
        for eligible in eligibility_patterns(rng, shape):
            for seed in rng.integers(0, 2**32 - 1, size=6).tolist() + [0, 1000, 1001]:
                scores = random.selection_scores(np.zeros(shape, np.float32), seed)
                np.testing.assert_array_equal(scores, -np.random.default_rng(seed).random(shape))
                per_cells = shape[1] * shape[2]
                for k in {0, 1, 4, per_cells, per_cells + 3}:
                    np.testing.assert_array_equal(select(scores, eligible, "per_image", k),
                                                  old_select_random(eligible, seed, k_per_image=k))
                for n in {0, 1, 17, eligible.size, eligible.size + 5}:
                    np.testing.assert_array_equal(select(scores, eligible, "global", n),
                                                  old_select_random(eligible, seed, n_total=n))
                cases += 1
    assert cases == 5 * 6 * 9


def test_random_reads_no_model_and_its_panel_shows_one_minus_the_key():
    random = get_strategy("random")
    with pytest.raises(NotImplementedError, match="reads no model"):
        random.pixel_scores(torch.zeros(1, C, 2, 2))
    grid = RegionGrid(5, 7, (2, 3))  # 3x3 cells, the last row and column smaller
    cells = random.selection_scores(np.zeros((1,) + grid.shape), seed=4)[0]
    shown = random.panel_map(None, cells, grid)
    assert shown.shape == (5, 7)
    for r in range(3):
        for c in range(3):
            rows, cols = grid.cell_slices(r, c)
            assert (shown[rows, cols] == 1 + cells[r, c]).all()
    assert 0 < shown.min() and shown.max() <= 1
