"""What a training step really does, checked against independent computations: the loss is
CE_l + w_u * CE_u + w_reco * ReCo with the configured weights; ReCo picks hard queries from the
softmax of the classifier's stride-4 logits; `optim.grad_clip` bounds the update; the student's
noise acts in training; each DDP rank draws its own noise while the weights stay identical on every
rank. (The heads' `optim.head_lr_mult`: tests/engine/test_optim.py.)"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from al.train_stage import fresh_model
from core.config import load_config
from core.distributed import DistContext
from core.logger import RunLogger
from datasets import WeakAug, build_source, full_view, normalize_images
from engine import trainer
from losses import objective
from losses.reco import reco_loss
from models.build import make_model
from tests.helpers import NUM_CLASSES, training_config, training_model


def _batch(seed=0, n=3, h=32, w=48):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n, h, w), generator=g)
    labels[0, :4] = 255
    return normalize_images(images), labels


def _coarse_logits(model, images):
    """The classifier's output before upsampling, computed here layer by layer."""
    low, high = model.backbone(images)
    decoded, _ = model.decoder(low, model.aspp(high))
    return model.classifier(decoded)


def test_step_loss_is_weighted_sum_of_independently_computed_terms(tiny_training):
    cfg = training_config(tiny_training, "loss.unlabeled_weight=0.3", "loss.reco_weight=0.7")
    model = training_model(cfg)
    images, labels = _batch()
    loss, parts = trainer.step_loss(model, images, labels, 1, reco=True, loss_cfg=cfg.loss, amp="none",
                                    generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(images)
        ce_l = F.cross_entropy(logits[:1], labels[:1], ignore_index=255)
        ce_u = F.cross_entropy(logits[1:], labels[1:], ignore_index=255)
        _, rep, _ = model(images, return_rep=True)
        prob = _coarse_logits(model, images).softmax(1)
        reco = reco_loss(rep, labels, prob, num_classes=NUM_CLASSES, temperature=cfg.loss.temperature,
                         num_queries=cfg.loss.num_queries, num_negatives=cfg.loss.num_negatives,
                         strong_threshold=cfg.loss.strong_threshold, generator=torch.Generator().manual_seed(5))
    assert parts["ce_labeled"].item() == pytest.approx(ce_l.item(), rel=1e-5)
    assert parts["ce_unlabeled"].item() == pytest.approx(ce_u.item(), rel=1e-5)
    assert parts["reco"].item() == pytest.approx(reco.item(), rel=1e-5) and reco.item() > 0
    expected = ce_l + 0.3 * ce_u + 0.7 * reco
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The weights matter: with the defaults (1, 1) the total is a different number.
    assert loss.item() != pytest.approx((ce_l + ce_u + reco).item(), rel=1e-3)


def test_reco_hard_queries_use_softmax_of_stride4_logits(tiny_training, monkeypatch):
    cfg = training_config(tiny_training)
    model = training_model(cfg)
    with torch.no_grad():
        model.classifier[1].weight.mul_(200.0)  # confident, spatially varying predictions
    images, labels = _batch(seed=1)
    seen = {}

    def spy(rep, label, prob, **kwargs):
        seen["prob"], seen["rep"] = prob, rep
        return rep.sum() * 0

    monkeypatch.setattr(objective, "reco_loss", spy)
    trainer.step_loss(model, images, labels, 2, reco=True, loss_cfg=cfg.loss, amp="none", generator=None)
    with torch.no_grad():
        expected = _coarse_logits(model, images).softmax(1)
        full = model(images)
        blurred = F.interpolate(full, size=expected.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
    assert seen["prob"].shape == (3, NUM_CLASSES, *seen["rep"].shape[-2:]) == expected.shape
    torch.testing.assert_close(seen["prob"], expected, rtol=1e-5, atol=1e-6)
    assert (seen["prob"] - blurred).abs().max() > 0.05  # the old, resized-back-down version differs


def _run_phase(tiny_training, cfg, model, stage_name="teacher", steps=1, tag="run"):
    src = build_source("synthetic", tiny_training["data"], "train")
    view = full_view(src, WeakAug(tuple(cfg.data.crop_size), tuple(cfg.data.scale_range)))
    stage = copy.deepcopy(cfg.stages[stage_name])
    stage["epochs"], stage["iters_per_epoch"] = 1, steps
    stage["batch_labeled"], stage["batch_unlabeled"] = 2, 0  # labeled batches only, >= 2 for BatchNorm
    stage_dir = tiny_training["base"] / tag
    return trainer.Trainer(model, stage=stage, stage_name=stage_name, cfg=cfg, ctx=DistContext(), amp="none",
                           stage_dir=stage_dir, logger=RunLogger(stage_dir, enabled=False), seed=3).fit(view, None)


def test_grad_clip_bounds_the_first_update(tiny_training):
    clip, lr = 1e-3, 0.5
    cfg = training_config(tiny_training, f"optim.grad_clip={clip}", f"optim.lr={lr}", "optim.momentum=0",
                          "optim.weight_decay=0", "stages.teacher.reco=false")
    model = training_model(cfg, rep_head=False)
    before = {k: v.clone() for k, v in model.named_parameters()}
    _run_phase(tiny_training, cfg, model, tag="clip")
    delta = torch.sqrt(sum(((p.detach() - before[k]) ** 2).sum() for k, p in model.named_parameters()))
    # SGD without momentum or decay: update = lr * clipped gradient, whose norm is exactly `clip`
    # (the raw gradient of a from-scratch model is far larger).
    assert delta.item() == pytest.approx(lr * clip, rel=1e-3)


def test_student_noise_is_built_and_acts_in_training(tiny_training):
    cfg = training_config(tiny_training, "model.dropout=0.4")
    student = fresh_model(cfg.model, cfg.stages.student, NUM_CLASSES, teacher_state=None if
                          cfg.stages.student.init != "teacher" else training_model(cfg).state_dict())
    teacher = fresh_model(cfg.model, cfg.stages.teacher, NUM_CLASSES, teacher_state=None)
    assert cfg.stages.student.noise and not cfg.stages.teacher.noise
    assert student.classifier[0].p == 0.4 and teacher.classifier[0].p == 0.0
    calls = []

    def dropped_share(module, inp, out):  # share of the non-zero features the layer zeroed
        alive = inp[0] != 0
        calls.append((module.training, float(((out == 0) & alive).sum() / alive.sum())))

    student.classifier[0].register_forward_hook(dropped_share)
    _run_phase(tiny_training, cfg, student, stage_name="student", steps=2, tag="noise")
    assert len(calls) == 2 and all(training for training, _ in calls)
    # About 40% of the features are zeroed by the dropout in every training step.
    assert all(0.3 < dropped < 0.5 for _, dropped in calls), calls


# --------------------------------------------------------------------------- per-rank noise, 2 gloo ranks
def _rank_worker(rank, world, init_file, data, cfg_path, out):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world)
    cfg = load_config(str(cfg_path), ["data.crop_size=[32,48]", "model.dropout=0.5"])
    torch.manual_seed(123)  # the pipeline seeds every rank alike before building a stage's model
    model = make_model(cfg.model, NUM_CLASSES, rep_head=True, noise=True, pretrained="none")
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    masks = []
    model.classifier[0].register_forward_hook(lambda m, inp, o: masks.append(((inp[0] != 0), (o == 0))))
    src = build_source("synthetic", data, "train")
    view = full_view(src, WeakAug((32, 48), (1.0, 1.0)))
    stage = copy.deepcopy(cfg.stages.student)
    stage["epochs"], stage["iters_per_epoch"], stage["batch_unlabeled"] = 1, 2, 0
    stage["batch_labeled"] = 2
    stage_dir = Path(out) / "stage"
    trainer.Trainer(model, stage=stage, stage_name="student", cfg=cfg, ctx=ctx, amp="none", stage_dir=stage_dir,
                    logger=RunLogger(stage_dir, enabled=False), seed=3).fit(view, None)
    torch.save({"initial": initial, "final": model.state_dict(), "masks": masks}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_each_rank_draws_its_own_noise_and_weights_agree(tiny_training, tmp_path):
    torch.multiprocessing.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tiny_training["data"]),
                                                    str(tiny_training["cfg_path"]), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in r0["initial"]:
        assert torch.equal(r0["initial"][key], r1["initial"][key]), key  # same start
        assert torch.equal(r0["final"][key], r1["final"][key]), key  # same weights after DDP steps
    assert len(r0["masks"]) == len(r1["masks"]) == 2
    for (alive0, zero0), (alive1, zero1) in zip(r0["masks"], r1["masks"]):
        # Where both ranks' features were non-zero, a zero is the dropout's doing: independent
        # masks (p = 0.5) agree on about half of those positions, a copied mask on all of them.
        both = alive0 & alive1
        assert both.sum() > 1000
        agreement = (zero0[both] == zero1[both]).float().mean().item()
        assert 0.4 < agreement < 0.6, agreement
