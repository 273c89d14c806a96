"""The module a stage trains: DDP (with synchronised BatchNorm when asked) over several
processes, the model itself in one."""
from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.distributed import DistContext
from models.sync_bn import convert_portable_sync_bn


def wrap_model(model: nn.Module, ctx: DistContext, sync_bn: bool) -> nn.Module:
    """The module to train. Distributed: BatchNorm2d layers become synchronised ones when
    `sync_bn` (torch's SyncBatchNorm on CUDA, PortableSyncBatchNorm2d elsewhere), then the model is
    wrapped in DDP. One process: `model` itself (one process already sees the whole batch).

    The BatchNorm layers are replaced inside `model` (same parameter and buffer tensors, same
    state-dict keys), so an optimizer built on `model.parameters()` and `model.state_dict()` keep
    working; `model` should already be on `ctx.device`."""
    if not ctx.distributed:
        return model
    if sync_bn:
        if ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # torch's fused CUDA kernels
        else:
            model = convert_portable_sync_bn(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
