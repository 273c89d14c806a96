"""engine/evaluation.py: the confusion matrix against a loop, IoU, mIoU and mAcc on hand-made matrices,
and evaluate() on a tiny set with eval.scales and in batches, against hand computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.distributed import DistContext
from engine.evaluation import confusion_matrix, evaluate, iou_from_confusion, miou_from_confusion
from tests.helpers import ContextNet, pass_config


def test_confusion_matrix_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (2, 7, 9), generator=g)
    label[0, :2] = 255
    pred = torch.randint(0, 4, (2, 7, 9), generator=g)
    expected = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(label.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            expected[t, p] += 1
    assert (confusion_matrix(pred, label, 4).numpy() == expected).all()


def test_miou_on_a_hand_made_confusion_matrix():
    conf = np.array([[3, 1, 0],    # class 0: tp 3, fn 1, fp 2 -> 3/6
                     [2, 4, 0],    # class 1: tp 4, fn 2, fp 1 -> 4/7
                     [0, 0, 0]])   # class 2: absent from truth and prediction -> NaN, not counted
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(4 / 7) and np.isnan(iou[2])
    assert miou_from_confusion(conf) == pytest.approx((0.5 + 4 / 7) / 2)


def test_mean_class_accuracy_against_a_hand_count():
    from engine.evaluation import mean_class_accuracy
    # rows = true class, columns = predicted: class 0 right 3 of 4, class 1 right 1 of 2, class 2 absent
    conf = np.array([[3, 1, 0], [1, 1, 0], [0, 5, 0]])
    conf[2] = 0
    assert mean_class_accuracy(conf) == pytest.approx((3 / 4 + 1 / 2) / 2)


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
    one = evaluate(net, tiny_source, pass_config(0.16), DistContext(), amp="none")["miou"]
    two = evaluate(net, tiny_source, pass_config(0.16, scales=[0.5, 1.0]), DistContext(), amp="none")["miou"]
    assert one == pytest.approx(_hand_miou(tiny_source, lambda img: np.zeros(img.shape[:2], np.int64)))
    assert two == pytest.approx(_hand_miou(tiny_source, lambda img: np.ones(img.shape[:2], np.int64)))
    assert one != pytest.approx(two)


def test_evaluate_in_batches_equals_one_image_at_a_time(tiny_source):
    net = ContextNet()
    net.b = torch.nn.Conv2d(8, 11, 3, padding=1)  # 11 classes for the synthetic set
    net.eval()
    cfg1 = pass_config(0.16, mode="slide", flip=True)
    cfg3 = pass_config(0.16, mode="slide", flip=True, batch_size=3, window_batch=5)
    a = evaluate(net, tiny_source, cfg1, DistContext(), amp="none")
    b = evaluate(net, tiny_source, cfg3, DistContext(), amp="none")
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-9) and a["per_class_iou"] == b["per_class_iou"]
