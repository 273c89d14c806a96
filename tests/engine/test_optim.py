"""engine/optim.py: the poly learning-rate schedule by hand, and the heads' `optim.head_lr_mult` (every
parameter in one group, the ratio kept by the schedule)."""
from __future__ import annotations

import pytest

from engine.optim import make_optimizer, poly_lr, set_poly_lr
from tests.helpers import training_config, training_model


def test_poly_schedule_values():
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100, 0.9) == pytest.approx(0.01 * 0.01 ** 0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_heads_get_head_lr_mult_and_poly_keeps_the_ratio(tiny_training):
    cfg = training_config(tiny_training, "optim.head_lr_mult=10", "optim.lr=0.02")
    model = training_model(cfg)
    optimizer = make_optimizer(model, cfg.optim)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every parameter in exactly one group
    for name, p in named.items():
        assert lr_of[id(p)] == pytest.approx(0.02 if name.startswith("backbone.") else 0.2), name
    set_poly_lr(optimizer, 7, 20, 0.9)
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(poly_lr(g["base_lr"], 7, 20, 0.9))
    assert {round(g["lr"] / optimizer.param_groups[0]["lr"], 6) for g in optimizer.param_groups} == {1.0, 10.0}
