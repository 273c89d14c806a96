"""engine/parallel.py: one process gets the model itself, its BatchNorm left plain (two ranks with
synchronised BatchNorm: tests/models/test_sync_bn.py)."""
from __future__ import annotations

from torch import nn

from core import distributed
from engine import parallel
from tests.helpers import bn_model


def test_one_process_gets_the_model_itself():
    model = bn_model()
    assert parallel.wrap_model(model, distributed.DistContext(), sync_bn=True) is model
    assert all(type(m) is nn.BatchNorm2d for m in model.modules() if isinstance(m, nn.BatchNorm2d))
