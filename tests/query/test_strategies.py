"""The acquisition strategies (query/strategies/) against numpy formulas written here, bald's noisy
passes with a fake model whose outputs are known, random against the old select_random's logic
(re-implemented here), the registry, the config keys and the pass file (pseudo_done.npz)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from al.pseudo import (StalePass, load_pass, mc_samples, noise_on, pseudo_label_file, pseudo_label_pass,
                       save_pass)
from core.config import SCHEMA, ConfigError, Config, load_config
from core.distributed import DistContext
from datasets import build_source, generate_synthetic
from datasets.decode import read_label_png
from datasets.transforms import normalize_images
from query.pool import RegionGrid
from query.scoring import select
from query.strategies import STRATEGIES, get_strategy

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


def numpy_entropy(p):  # p: (..., C, H, W)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=-3)


def numpy_margin(p):
    ranked = np.sort(p, axis=-3)
    return 1.0 - (ranked[..., -1, :, :] - ranked[..., -2, :, :])


def numpy_least_confidence(p):
    return 1.0 - p.max(axis=-3)


def numpy_bald(samples):  # (T, N, C, H, W)
    return numpy_entropy(samples.mean(axis=0)) - numpy_entropy(samples).mean(axis=0)


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


def test_the_panel_scale_is_the_strategys_maximum():
    assert get_strategy("entropy").score_max(11) == pytest.approx(math.log(11))
    assert get_strategy("bald").score_max(19) == pytest.approx(math.log(19))
    assert get_strategy("margin").score_max(11) == 1.0 and get_strategy("least_confidence").score_max(11) == 1.0
    for name, strategy in STRATEGIES.items():
        words = name.replace("_", " ").split()[:1] + (["mutual"] if name == "bald" else [])
        assert any(w in strategy.bar_label for w in words), (name, strategy.bar_label)


# ------------------------------------------------------------------ registry and config
def test_the_registry_refuses_an_unknown_name_and_agrees_with_the_config():
    with pytest.raises(ValueError, match="unknown strategy 'variance'.*known"):
        get_strategy("variance")
    assert set(SCHEMA["query"]["strategy"].choices) == set(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name and get_strategy(name) is strategy
    with pytest.raises(ConfigError, match="query.strategy.*'variance' is not one of"):
        load_config("demo", ["query.strategy=variance"])


def test_config_checks_mc_passes_and_balds_noise():
    assert load_config("demo", ["query.strategy=bald"]).query.mc_passes >= 2
    with pytest.raises(ConfigError, match=r"^query.mc_passes \(from command line\): must be at least 2"):
        load_config("demo", ["query.mc_passes=1"])
    with pytest.raises(ConfigError, match="query.strategy.*model.dropout"):
        load_config("demo", ["query.strategy=bald", "model.dropout=0"])
    with pytest.raises(ConfigError, match="query.strategy.*model.stochastic_depth"):
        load_config("demo", ["query.strategy=bald", "model.backbone=resnet50", "model.stochastic_depth=0"])
    load_config("demo", ["model.dropout=0", "query.strategy=margin"])  # the noise matters to bald only


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


# ------------------------------------------------------------------ the pass: scores, bald's noisy passes
@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    generate_synthetic(root, num_train=1, num_val=3, num_test=1, height=24, width=32, seed=4)
    return build_source("synthetic", root, "val")


def _cfg(mc_passes=3):
    ev = {"mode": "whole", "window": [16, 16], "stride": [8, 8], "flip": False, "scales": [1.0],
          "batch_size": 1, "window_batch": 8}
    return Config.wrap({"eval": ev, "data": {"workers": 0}, "runtime": {"channels_last": False},
                        "pseudo": {"scales": [1.0], "flip": False, "threshold": 0.3, "batch_size": 1},
                        "query": {"mc_passes": mc_passes}})


def _image(src, i):
    img, _ = src.read(i)
    return normalize_images(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous())


def _cell_means(pixels, grid):
    return np.array([[pixels[grid.cell_slices(r, c)].mean() for c in range(grid.shape[1])]
                     for r in range(grid.shape[0])])


class PlainNet(torch.nn.Module):
    def __init__(self, classes):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = torch.nn.Conv2d(3, classes, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("name, formula", [("entropy", numpy_entropy), ("margin", numpy_margin),
                                           ("least_confidence", numpy_least_confidence)])
def test_the_pass_scores_regions_with_the_strategy(tiny_source, tmp_path, name, formula):
    net = PlainNet(tiny_source.num_classes).eval()
    grid = RegionGrid(24, 32, (10, 12))
    out = pseudo_label_pass(net, tiny_source, [0, 2], _cfg(), DistContext(), amp="none", out_dir=tmp_path,
                            grid=grid, strategy=get_strategy(name), keep_maps_for=[2])
    assert sorted(out["scores"]) == [0, 2] and sorted(out["maps"]) == [2] and out["covered"] == [0, 2]
    for i in (0, 2):
        with torch.no_grad():
            prob = net(_image(tiny_source, i)).softmax(1)[0].double().numpy()
        pixels = formula(prob)
        np.testing.assert_allclose(out["scores"][i], _cell_means(pixels, grid), atol=1e-5)
    np.testing.assert_allclose(out["maps"][2].astype(np.float64), pixels, atol=2e-3)  # float16 copy


def test_random_pass_scores_nothing_but_covers_the_images(tiny_source, tmp_path):
    grid = RegionGrid(24, 32, (10, 12))
    out = pseudo_label_pass(PlainNet(tiny_source.num_classes).eval(), tiny_source, [1, 2], _cfg(), DistContext(),
                            amp="none", out_dir=tmp_path, grid=grid, strategy=get_strategy("random"),
                            keep_maps_for=[1])
    assert out["scores"] == {} and out["maps"] == {} and out["covered"] == [1, 2]


class KnownNoiseNet(torch.nn.Module):
    """Plain output `base(x)` in eval mode; with the noise on, the t-th noisy pass of an image
    returns base(x) + offsets[t] (t counts the noisy calls, `passes` per image, in order).
    The dropout module is only the noise switch; BatchNorm must stay in eval mode."""

    def __init__(self, classes, passes):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)
        self.bn = torch.nn.BatchNorm2d(3)
        self.passes, self.noisy_calls = passes, 0
        g = torch.Generator().manual_seed(2)
        self.weight = torch.randn(classes, 3, generator=g)
        self.offsets = 3.0 * torch.randn(passes, classes, 24, 32, generator=g)

    def base(self, x):
        return torch.einsum("kc,nchw->nkhw", self.weight, x)

    def forward(self, x):
        assert not self.bn.training, "BatchNorm switched to train mode by the MC passes"
        if not self.drop.training:
            return self.base(x)
        t = self.noisy_calls % self.passes
        self.noisy_calls += 1
        return self.base(x) + self.offsets[t]


def test_bald_pass_on_known_noisy_outputs_and_pseudo_labels_from_the_plain_prediction(tiny_source, tmp_path):
    passes = 4
    net = KnownNoiseNet(tiny_source.num_classes, passes).eval()
    grid = RegionGrid(24, 32, (10, 12))
    out = pseudo_label_pass(net, tiny_source, [0, 1, 2], _cfg(passes), DistContext(), amp="none", out_dir=tmp_path,
                            grid=grid, strategy=get_strategy("bald"), stage_seed=7, keep_maps_for=[1])
    assert net.noisy_calls == 3 * passes and not net.drop.training  # the noise is off again afterwards
    for i in (0, 1, 2):
        x = _image(tiny_source, i)
        with torch.no_grad():
            samples = torch.stack([(net.base(x) + net.offsets[t]).softmax(1) for t in range(passes)]).double().numpy()
            plain = net.base(x).softmax(1)[0].double().numpy()
        np.testing.assert_allclose(out["scores"][i], _cell_means(numpy_bald(samples)[0], grid), atol=1e-5)
        conf, pred = plain.max(0), plain.argmax(0)
        clear = np.abs(conf - 0.3) > 1e-5
        written = read_label_png(pseudo_label_file(tmp_path, tiny_source.ids[i]))
        assert (written == np.where(conf >= 0.3, pred, 255))[clear].all()
    assert out["maps"][1].shape == (24, 32)


def test_bald_refuses_a_model_without_noise(tiny_source, tmp_path):
    with pytest.raises(ValueError, match="no noise to sample"):
        pseudo_label_pass(PlainNet(tiny_source.num_classes).eval(), tiny_source, [0], _cfg(), DistContext(),
                          amp="none", out_dir=tmp_path, grid=RegionGrid(24, 32, (8, 8)), strategy=get_strategy("bald"))


class DropoutNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, C, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(C)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


def test_mc_noise_is_seeded_per_stage_and_image_not_per_process_or_batch():
    torch.manual_seed(0)
    net = DropoutNet().eval()
    settings = {"scales": (1.0,), "flip": False, "mode": "whole", "window": (16, 16), "stride": (8, 8),
                "amp": "none", "channels_last": False, "window_batch": 8}
    images = torch.randn(2, 3, 8, 8)
    rng_before = torch.get_rng_state()
    both = mc_samples(net, images, [5, 9], 3, 11, C, settings)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert both.shape == (3, 2, C, 8, 8)
    alone = mc_samples(net, images[1:], [9], 3, 11, C, settings)  # another rank, another batch
    assert torch.equal(alone[:, 0], both[:, 1])
    assert not torch.equal(both[0, 0], both[1, 0])                 # the passes differ from each other
    assert not torch.equal(mc_samples(net, images[1:], [10], 3, 11, C, settings), alone)  # another image
    assert not torch.equal(mc_samples(net, images[1:], [9], 3, 12, C, settings), alone)   # another stage
    assert not net.drop.training and not net.bn.training


def test_noise_on_switches_only_the_noise_modules():
    net = DropoutNet().eval()
    with noise_on(net):
        assert net.drop.training and not net.bn.training and not net.conv.training
    assert not net.drop.training


# ------------------------------------------------------------------ the pass file
def test_pass_file_names_its_strategy_and_old_or_other_files_are_stale(tmp_path):
    out = {"scores": {1: np.full((2, 3), 0.5, np.float32)}, "maps": {1: np.ones((4, 6), np.float16)},
           "covered": [0, 1], "seconds": 2.5}
    path = tmp_path / "pseudo_done.npz"
    save_pass(path, out, 3, (2, 3), "margin")
    back = load_pass(path, "margin")
    assert back["strategy"] == "margin" and back["seconds"] == 2.5
    np.testing.assert_array_equal(back["has_scores"], [True, True, False])
    assert (back["scores"][1] == 0.5).all() and (back["scores"][0] == 0).all() and list(back["maps"]) == [1]
    with pytest.raises(StalePass, match="'margin' scores, query.strategy is 'entropy'"):
        load_pass(path, "entropy")
    old = tmp_path / "old.npz"  # what the code before the registry wrote: entropy maps under vis / vis_ids
    np.savez(old, scores=np.zeros((3, 2, 3), np.float32), has_scores=np.ones(3, bool),
             vis_ids=np.array([1]), vis=np.ones((1, 4, 6), np.float16), seconds=1.0)
    with pytest.raises(StalePass, match="before the strategy registry"):
        load_pass(old, "entropy")
