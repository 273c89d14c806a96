"""Batched inference (engine/inference.py: sliding windows, flips, scales, several images) against hand
loops written here, independently of the code."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.inference import predict_probs
from tests.helpers import ContextNet

C = 5


class PointwiseNet(torch.nn.Module):
    """A 1x1 conv. Sliding windows, flips and batched images: ContextNet."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return self.conv(x)


def test_multi_scale_averages_softmax_over_scales():
    net = PointwiseNet().eval()
    x = torch.randn(1, 3, 16, 16)
    got = predict_probs(net, x, num_classes=5, scales=[0.5, 1.0])
    half = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    up = torch.nn.functional.interpolate(net(half), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(got, (up.softmax(1) + net(x).softmax(1)) / 2, atol=1e-6)


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
