"""Synchronised BatchNorm (model.sync_bn, models/sync_bn.py) on 2 gloo processes, the model wrapped
by engine/parallel.py.

The synchronised layers are checked against an independent expectation: two ranks that each
hold half of a batch must produce what one plain nn.BatchNorm2d model produces on the whole
batch -- outputs, input gradients, parameter gradients (DDP averages them over ranks) and
running statistics -- and the ranks must end with identical statistics."""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from core import distributed
from engine import parallel
from models import sync_bn
from tests.helpers import bn_model, free_port

WORLD = 2
STEPS = 2  # two steps: the running statistics must accumulate like BatchNorm's


def _batches():
    """Per step: the whole batch and a fixed weighting of the output (loss = sum(out * weight))."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 6, 5, generator=g) * 3 + 1, torch.randn(4, 3, 6, 5, generator=g))
            for _ in range(STEPS)]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu", timeout_minutes=7)
    try:
        model = bn_model()
        net = parallel.wrap_model(model, ctx, sync_bn=True)
        half = slice(rank * 2, rank * 2 + 2)  # this rank's half of every batch
        outs, input_grads = [], []
        for x, weight in _batches():
            xr = x[half].clone().requires_grad_()
            out = net(xr)
            (out * weight[half]).sum().backward()
            outs.append(out.detach())
            input_grads.append(xr.grad)
        torch.save({"outs": outs, "input_grads": input_grads,
                    "grads": {n: p.grad for n, p in model.named_parameters()},
                    "state": model.state_dict(),
                    "bn_types": [type(m).__name__ for m in model.modules() if isinstance(m, nn.BatchNorm2d)],
                    "is_ddp": isinstance(net, nn.parallel.DistributedDataParallel)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def _reference():
    """One process, plain BatchNorm2d, the whole batch."""
    model = bn_model().train()
    outs, input_grads = [], []
    for x, weight in _batches():
        x = x.clone().requires_grad_()
        out = model(x)
        (out * weight).sum().backward()
        outs.append(out.detach())
        input_grads.append(x.grad)
    return {"outs": outs, "input_grads": input_grads,
            "grads": {n: p.grad for n, p in model.named_parameters()}, "state": model.state_dict()}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync_bn")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_two_ranks_with_sync_bn_equal_one_batchnorm_on_the_whole_batch(ranks):
    ref = _reference()
    for rank, got in enumerate(ranks):
        assert got["is_ddp"] and got["bn_types"] == ["PortableSyncBatchNorm2d"] * 2
        half = slice(rank * 2, rank * 2 + 2)
        for step in range(STEPS):
            torch.testing.assert_close(got["outs"][step], ref["outs"][step][half], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["input_grads"][step], ref["input_grads"][step][half],
                                       atol=1e-5, rtol=1e-5)
        # DDP averages the ranks' gradients; the whole-batch loss is the sum of the ranks' losses.
        for name, grad in ref["grads"].items():
            torch.testing.assert_close(got["grads"][name] * WORLD, grad, atol=1e-4, rtol=1e-5)
        # Same keys as BatchNorm2d (weights load into either), same running statistics.
        assert list(got["state"]) == list(ref["state"])
        for key, value in ref["state"].items():
            torch.testing.assert_close(got["state"][key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert int(ranks[0]["state"]["4.num_batches_tracked"]) == STEPS


def test_ranks_hold_identical_batchnorm_statistics(ranks):
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key


def test_conversion_shares_parameters_and_refuses_other_batchnorms():
    model = bn_model()
    params = list(model.parameters())
    converted = sync_bn.convert_portable_sync_bn(model)
    assert converted is model and list(model.parameters()) == params  # same objects: optimizers keep working
    assert isinstance(model[1], sync_bn.PortableSyncBatchNorm2d) and model[4].momentum is None
    with pytest.raises(TypeError, match="BatchNorm1d"):
        sync_bn.convert_portable_sync_bn(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
