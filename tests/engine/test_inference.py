"""Batched inference (sliding windows, flips, scales, several images) against hand loops written
here, independently of engine/inference.py; evaluation and the pseudo-label pass on a tiny set."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets import build_source, generate_synthetic
from datasets.decode import read_label_png
from datasets.transforms import normalize_images
from core.config import Config
from engine.data import collate_by_size
from core.distributed import DistContext
from engine.evaluation import evaluate
from engine.inference import predict_probs
from al.pseudo import pseudo_label_file, pseudo_label_pass
from query.pool import RegionGrid
from query.strategies import get_strategy

C = 5


class ContextNet(torch.nn.Module):
    """Two zero-padded 3x3 convs: a pixel's output depends on its 5x5 neighbourhood, and on
    where the crop border is, so sliding windows differ from the whole image, and from a
    window cut at the wrong place."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, C, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def hand_slide_probs(net, image, window, ys, xs):
    """One (3, H, W) image, windows at the given corners, one forward per window."""
    _, h, w = image.shape
    wh, ww = window
    padded = F.pad(image[None], (0, max(ww - w, 0), 0, max(wh - h, 0)))
    total = torch.zeros(1, C, *padded.shape[-2:])
    count = torch.zeros(1, 1, *padded.shape[-2:])
    for y in ys:
        for x in xs:
            with torch.no_grad():
                total[:, :, y:y + wh, x:x + ww] += net(padded[:, :, y:y + wh, x:x + ww])
            count[:, :, y:y + wh, x:x + ww] += 1
    assert (count > 0).all()
    return (total / count)[:, :, :h, :w].softmax(1)[0]


# Corners worked out by hand for a 37x53 image: rows every 10 px up to 37-16=21, columns every
# 14 px up to 53-24=29 (the last window moved back to end at the edge); a 40-px-high window
# covers the padded height once.
CASES = [((16, 24), (10, 14), [0, 10, 20, 21], [0, 14, 28, 29]),
         ((40, 24), (20, 14), [0], [0, 14, 28, 29]),
         ((64, 64), (32, 32), [0], [0])]


@pytest.mark.parametrize("window,stride,ys,xs", CASES)
def test_batched_sliding_windows_equal_a_hand_loop_over_windows(window, stride, ys, xs):
    net = ContextNet().eval()
    images = torch.randn(3, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([hand_slide_probs(net, img, window, ys, xs) for img in images])
    for window_batch in (1, 5, 1000):  # one window per forward, chunks across images, all at once
        got = predict_probs(net, images, num_classes=C, mode="slide", window=window, stride=stride,
                            window_batch=window_batch)
        assert torch.allclose(got, expected, atol=1e-5), window_batch
    whole = net(images).softmax(1)
    if window != (64, 64):  # windows cut the image: the 3x3 context really differs from whole
        assert not torch.allclose(expected, whole, atol=1e-3)


def test_flip_and_scales_average_softmax_as_a_hand_computation():
    net = ContextNet().eval()
    images = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(2))
    expected = []
    for img in images:
        x = img[None]
        parts = []
        with torch.no_grad():
            for scale in (0.5, 1.0):
                xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear",
                                                          align_corners=False)
                for flipped in (False, True):
                    logits = net(xs.flip(-1)).flip(-1) if flipped else net(xs)
                    logits = F.interpolate(logits, size=(16, 20), mode="bilinear", align_corners=False)
                    parts.append(logits.softmax(1))
        expected.append(sum(parts)[0] / len(parts))
    for window_batch in (1, 3, 8):
        got = predict_probs(net, images, num_classes=C, scales=[0.5, 1.0], flip=True, window_batch=window_batch)
        assert torch.allclose(got, torch.stack(expected), atol=1e-5), window_batch


def test_an_image_predicts_the_same_alone_and_in_a_batch():
    net = ContextNet().eval()
    images = torch.randn(4, 3, 30, 41, generator=torch.Generator().manual_seed(3))
    kw = dict(num_classes=C, mode="slide", window=(16, 16), stride=(12, 12), flip=True, scales=[1.0, 0.75])
    together = predict_probs(net, images, window_batch=7, **kw)
    for i in range(len(images)):
        alone = predict_probs(net, images[i:i + 1], window_batch=7, **kw)
        assert torch.allclose(together[i:i + 1], alone, atol=1e-5)


def test_bad_mode_and_window_batch_are_refused():
    net = ContextNet().eval()
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="mode"):
        predict_probs(net, x, num_classes=C, mode="tiles")
    with pytest.raises(ValueError, match="window_batch"):
        predict_probs(net, x, num_classes=C, window_batch=0)


def test_collate_by_size_groups_images_of_equal_size_in_order():
    def sample(h, w, index):
        return {"image": torch.full((3, h, w), index, dtype=torch.uint8),
                "label": torch.zeros((h, w), dtype=torch.uint8), "id": f"i{index}", "index": index}

    groups = collate_by_size([sample(4, 6, 0), sample(5, 6, 1), sample(4, 6, 2), sample(4, 5, 3)])
    assert [g["index"].tolist() for g in groups] == [[0, 2], [1], [3]]
    assert [tuple(g["image"].shape) for g in groups] == [(2, 3, 4, 6), (1, 3, 5, 6), (1, 3, 4, 5)]
    assert groups[0]["image"][1].max().item() == 2 and groups[0]["id"] == ["i0", "i2"]


# --------------------------------------------------------------------------- evaluate / pseudo pass
@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    generate_synthetic(root, num_train=1, num_val=3, num_test=1, height=24, width=32, seed=4)
    return build_source("synthetic", root, "val")


def _cfg(**eval_overrides):
    ev = {"mode": "whole", "window": [16, 16], "stride": [8, 8], "flip": False, "scales": [1.0],
          "batch_size": 1, "window_batch": 8, **eval_overrides}
    return Config.wrap({"eval": ev, "data": {"workers": 0}, "runtime": {"channels_last": False},
                        "pseudo": {"scales": [1.0], "flip": False, "threshold": 0.16, "batch_size": 1}})


class ScaleNet(torch.nn.Module):
    """11 classes, prediction driven by image size: at 24x32 it says class 0 weakly, at half
    size class 1 strongly -- so averaging the two scales changes every pixel's argmax."""

    def forward(self, x):
        n, _, h, w = x.shape
        out = torch.zeros(n, 11, h, w)
        if h == 24:
            out[:, 0] = 1.0
        else:
            out[:, 1] = 3.0
        return out


def _hand_miou(src, predict) -> float:
    conf = np.zeros((11, 11), dtype=np.int64)
    for i in range(len(src)):
        img, lab = src.read(i)
        pred = predict(img)
        for t, p in zip(lab.ravel(), pred.ravel()):
            if t != 255:
                conf[t, p] += 1
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    return 100.0 * float(np.mean(tp[union > 0] / union[union > 0]))


def test_evaluate_uses_eval_scales(tiny_source):
    net = ScaleNet()
    one = evaluate(net, tiny_source, _cfg(), DistContext(), amp="none")["miou"]
    two = evaluate(net, tiny_source, _cfg(scales=[0.5, 1.0]), DistContext(), amp="none")["miou"]
    assert one == pytest.approx(_hand_miou(tiny_source, lambda img: np.zeros(img.shape[:2], np.int64)))
    assert two == pytest.approx(_hand_miou(tiny_source, lambda img: np.ones(img.shape[:2], np.int64)))
    assert one != pytest.approx(two)


def test_evaluate_in_batches_equals_one_image_at_a_time(tiny_source):
    net = ContextNet()
    net.b = torch.nn.Conv2d(8, 11, 3, padding=1)  # 11 classes for the synthetic set
    net.eval()
    cfg1 = _cfg(mode="slide", flip=True)
    cfg3 = _cfg(mode="slide", flip=True, batch_size=3, window_batch=5)
    a = evaluate(net, tiny_source, cfg1, DistContext(), amp="none")
    b = evaluate(net, tiny_source, cfg3, DistContext(), amp="none")
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-9) and a["per_class_iou"] == b["per_class_iou"]


def test_pseudo_pass_writes_thresholded_labels_and_cell_entropy_by_hand(tiny_source, tmp_path):
    torch.manual_seed(5)
    net = ContextNet()
    net.b = torch.nn.Conv2d(8, 11, 3, padding=1)
    net.eval()
    grid = RegionGrid(24, 32, (10, 12))  # 3x3 cells, the last row/column smaller
    for batch_size in (1, 2):
        cfg = _cfg()
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
