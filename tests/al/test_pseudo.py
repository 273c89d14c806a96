"""al/pseudo.py: pseudo labels keep the confident pixels only; the pseudo-label pass scores regions
with each strategy (against the numpy formulas of tests/helpers.py, bald on a fake model whose noisy
outputs are known), writes thresholded labels by hand, keeps maps for the panels, seeds its MC
noise per stage and image, and its pass file (pseudo_done.npz) names its strategy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from al.pseudo import (StalePass, load_pass, mc_samples, noise_on, pseudo_label_file, pseudo_label_pass, pseudo_labels,
                       save_pass)
from core.distributed import DistContext
from datasets.decode import read_label_png
from datasets.transforms import normalize_images
from query.pool import RegionGrid
from query.strategies import get_strategy
from tests.helpers import ContextNet, numpy_bald, numpy_entropy, numpy_least_confidence, numpy_margin, pass_config


def test_pseudo_labels_keep_confident_pixels_only():
    prob = torch.tensor([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.05, 0.25, 0.7]]).T.reshape(1, 3, 1, 3)
    assert pseudo_labels(prob, 0.7).tolist() == [[[0, 255, 2]]]


# ------------------------------------------------------------------ the pass: scores, bald's noisy passes
C = 5


def _cfg(mc_passes=3):
    """The pass's settings here: pseudo labels cut at 0.3, `mc_passes` noisy passes for bald."""
    return pass_config(0.3, mc_passes=mc_passes)


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


def test_pseudo_pass_writes_thresholded_labels_and_cell_entropy_by_hand(tiny_source, tmp_path):
    torch.manual_seed(5)
    net = ContextNet()
    net.b = torch.nn.Conv2d(8, 11, 3, padding=1)
    net.eval()
    grid = RegionGrid(24, 32, (10, 12))  # 3x3 cells, the last row/column smaller
    for batch_size in (1, 2):
        cfg = pass_config(0.16)
        cfg.pseudo.batch_size = batch_size
        out_dir = tmp_path / f"b{batch_size}"
        out = pseudo_label_pass(net, tiny_source, [0, 2], cfg, DistContext(), amp="none",
                                out_dir=out_dir, grid=grid, strategy=get_strategy("entropy"), keep_maps_for=[2])
        assert sorted(out["scores"]) == [0, 2] and sorted(out["maps"]) == [2]
        for i in (0, 2):
            img, _ = tiny_source.read(i)
            with torch.no_grad():
                x = normalize_images(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous())
                prob = net(x).softmax(1)[0].numpy().astype(np.float64)
            conf, pred = prob.max(0), prob.argmax(0)
            expected = np.where(conf >= 0.16, pred, 255)  # 0.16: about half the pixels are confident
            assert 0.2 < (expected == 255).mean() < 0.8
            top2 = np.sort(prob, axis=0)[-2:]
            clear = (np.abs(conf - 0.16) > 1e-5) & (top2[1] - top2[0] > 1e-5)  # float32 vs float64
            written = read_label_png(pseudo_label_file(out_dir, tiny_source.ids[i]))  # palette PNG: indices
            assert clear.mean() > 0.95 and (written == expected)[clear].all()
            entropy = -(prob * np.log(prob)).sum(0)
            cells = np.array([[entropy[r:r + 10, c:c + 12].mean() for c in range(0, 32, 12)]
                              for r in range(0, 24, 10)])
            assert np.allclose(out["scores"][i], cells, atol=1e-5)
            if i == 2:  # kept for the query panels, as float16
                assert np.allclose(out["maps"][2].astype(np.float64), entropy, atol=2e-3)


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
