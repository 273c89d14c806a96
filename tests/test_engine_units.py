"""Engine building blocks checked against direct computations."""
import numpy as np
import pytest
import torch

from core import checkpoint as ckpt
from engine.data import StreamSampler
from core.distributed import DistContext
from engine.evaluation import confusion_matrix, iou_from_confusion, miou_from_confusion
from engine.inference import predict_probs
from engine.optim import poly_lr
from al.pseudo import pseudo_labels


def test_poly_schedule_values():
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100, 0.9) == pytest.approx(0.01 * 0.01 ** 0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


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


class PointwiseNet(torch.nn.Module):
    """A 1x1 conv. Sliding windows, flips and batched images: tests/test_inference.py."""

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


def test_pseudo_labels_keep_confident_pixels_only():
    prob = torch.tensor([[0.8, 0.1, 0.1], [0.5, 0.4, 0.1], [0.05, 0.25, 0.7]]).T.reshape(1, 3, 1, 3)
    assert pseudo_labels(prob, 0.7).tolist() == [[[0, 255, 2]]]


def _stream(length, batch, seed, start, end, rank, world):
    ctx = DistContext(rank=rank, world_size=world)
    return list(StreamSampler(length, batch, seed, start, end, ctx))


def test_stream_ranks_are_disjoint_and_cover_each_epoch():
    a = _stream(10, 2, 3, 0, 5, 0, 2)
    b = _stream(10, 2, 3, 0, 5, 1, 2)
    positions = sorted(p for _, p in a + b)
    assert positions == list(range(20))          # every position once, none shared
    by_pos = dict((p, i) for i, p in a + b)
    assert sorted(by_pos[p] for p in range(10)) == list(range(10))      # epoch 0 is a permutation
    assert sorted(by_pos[p] for p in range(10, 20)) == list(range(10))  # epoch 1 too
    assert [by_pos[p] for p in range(10)] != [by_pos[p] for p in range(10, 20)]  # reshuffled


def test_stream_resumes_exactly_where_it_stopped():
    full = _stream(7, 3, 1, 0, 10, 0, 1)
    assert _stream(7, 3, 1, 0, 4, 0, 1) + _stream(7, 3, 1, 4, 10, 0, 1) == full


def test_checkpoint_corruption_is_detected_and_the_previous_one_used(tmp_path):
    ckpt.save_step(tmp_path, 10, {"step": 10})
    ckpt.save_step(tmp_path, 20, {"step": 20})
    ckpt.save_step(tmp_path, 30, {"step": 30})
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [30, 20]  # keeps the newest two
    newest = tmp_path / "step_00000030.pth"
    newest.write_bytes(newest.read_bytes()[:100])  # cut short, as by a full disk
    warnings = []
    state = ckpt.load_latest(tmp_path, warn=warnings.append)
    assert state["step"] == 20
    assert len(warnings) == 1 and str(newest) in warnings[0] and "checksum" in warnings[0]
    with pytest.raises(ckpt.CorruptCheckpoint, match="step_00000030"):
        ckpt.load_verified(newest)


def test_stage_record_keeps_the_final_miou_and_the_best_evaluation_with_its_step():
    from core.config import Config
    from al.rundir import stage_record
    stage = Config.wrap({"kind": "supervised", "epochs": 3, "iters_per_epoch": 10})
    metrics = {"miou": 50.0, "per_class_iou": {"a": 50.0}}
    record = stage_record("teacher", stage, metrics, 10.0, 1.0,
                          evals=[{"step": 10, "miou": 40.0}, {"step": 20, "miou": 55.0}])
    assert record["miou"] == 50.0  # what the paper comparison uses: the final model
    assert record["best"] == {"miou": 55.0, "step": 20, "of_steps": 30}
    # No evaluation during training: the best is the final one, at the last step.
    assert stage_record("teacher", stage, metrics, 10.0, 1.0)["best"] == {"miou": 50.0, "step": 30, "of_steps": 30}
