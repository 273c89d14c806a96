"""Process group setup from torchrun's environment, the few collectives the scripts use, and the
model wrapping for DDP (with optional synchronised BatchNorm).

Plain `python script.py` is one process (no process group); `torchrun` (any `--nproc_per_node`,
one node or several) sets RANK / WORLD_SIZE / LOCAL_RANK and we join NCCL on CUDA or gloo on
CPU, also with a world of one process, so that `torchrun --nproc_per_node 1` runs the same DDP
and collective code as a larger world. No `--local-rank` argument plumbing: everything comes
from the environment.

Several nodes: rank 0 writes the run directory (weights, pools, the pseudo-label pass) and every
rank reads it, so `output_dir` must be one folder every node sees (`check_shared_folder` refuses
to start otherwise); `LOCAL_RANK` picks the GPU and `LOCAL_WORLD_SIZE` divides each node's cores.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # the process group's ('nccl' / 'gloo') when launched by torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """In a process group: collectives and DDP are used (a torchrun world of one included)."""
        return self.world_size > 1 or self.backend is not None


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` means CUDA when present. Asking for CUDA without it is an error, not a fallback."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device=cuda but torch.cuda.is_available() is False "
                               "(use runtime.device=cpu, or install a CUDA build of torch)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(requested_device: str = "auto", timeout_minutes: float = 60.0) -> DistContext:
    """Join the process group torchrun describes (nothing to join for one process).

    `timeout_minutes` bounds how long a collective waits for the slowest rank. Rank 0 alone
    writes summaries and panels while the others wait at the next barrier, so it must be far
    longer than any such work (torch's NCCL default of 10 minutes is not)."""
    launched = "WORLD_SIZE" in os.environ  # set by torchrun, never by a plain `python script.py`
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    backend = ("nccl" if device.type == "cuda" else "gloo") if launched else None
    if launched and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(rank, world_size, local_rank, device, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        # gloo barrier is enough on CPU; on NCCL pass the device so it does not guess.
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's `obj`, in rank order (one element when not distributed)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's `obj` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when `flag` is true on at least one (used to stop all ranks together)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def shard(indices: list, ctx: DistContext) -> list:
    """This rank's share of a list: every world_size-th element (disjoint, covers all)."""
    return indices[ctx.rank::ctx.world_size]


def check_shared_folder(folder, ctx: DistContext, what: str, wait_s: float = 10.0) -> None:
    """Refuse to go on unless every rank sees the files rank 0 writes into `folder` (the same path
    on every rank; it must exist on rank 0): on several nodes, a folder on no shared file system.
    Rank 0 writes a token, every rank looks for it (for up to `wait_s`: a network file system may
    show a new file late), rank 0 removes it. Raises ValueError, on every rank, naming the first
    rank and host that did not see it. Nothing to check for one process."""
    if not ctx.distributed:
        return
    folder = Path(folder)  # each rank's own view of the same path
    token = broadcast_object(f"{socket.gethostname()} {os.getpid()} {time.time_ns()}", ctx)
    probe = folder / f".shared-check-{hashlib.sha256(token.encode()).hexdigest()[:16]}"
    if ctx.is_main:
        tmp = probe.with_name(probe.name + ".tmp")
        tmp.write_text(token)
        os.replace(tmp, probe)
    barrier(ctx)
    seen, deadline = False, time.monotonic() + wait_s
    while True:
        seen = probe.is_file() and probe.read_text() == token
        if seen or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    views = all_gather_objects((seen, socket.gethostname()), ctx)
    if ctx.is_main:
        probe.unlink()
    barrier(ctx)
    blind = [(r, host) for r, (ok, host) in enumerate(views) if not ok]
    if blind:
        rank, host = blind[0]
        raise ValueError(f"{what} {folder} is not shared between the nodes: rank {rank} on {host} does not see "
                         f"the file rank 0 ({views[0][1]}) wrote there ({len(blind)} of {len(views)} ranks "
                         f"do not); put it on a file system that every node mounts at the same path")


def check_shared_output_dir(output_dir, ctx: DistContext) -> None:
    """`check_shared_folder` on output_dir, or on its nearest existing parent before the first run
    (nothing is left behind either way)."""
    if not ctx.distributed:
        return
    folder = Path(output_dir)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    check_shared_folder(folder, ctx, f"output_dir {output_dir} (checked in)")


def broadcast_buffers(model, ctx: DistContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    if ctx.distributed:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


# --------------------------------------------------------------------------- model wrapping
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


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients: every rank's loss depends
    on the summed value, so each input's gradient collects all of them. (Written here because
    torch.distributed.nn.functional.all_reduce is deprecated and warns on every call.)"""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class PortableSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch over all ranks, from
    plain all-reduces that every backend has (torch.nn.SyncBatchNorm refuses CPU tensors).

    Training on several ranks: mean and biased variance over every rank's N*H*W values per
    channel (two passes: the sum, then the squared deviations from the global mean, which is
    numerically safer than E[x^2] - E[x]^2); running statistics updated as BatchNorm does, with
    the unbiased variance. Otherwise it is BatchNorm2d. Same parameters and buffers as
    BatchNorm2d, so state dicts load into either."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        xf = x.float()  # statistics in fp32 under autocast, as BatchNorm computes them
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.new_tensor([x.numel() / x.shape[1]])])
        total = _AllReduceSum.apply(local)
        count = total[-1].detach()
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)} "
                             f"on each of {dist.get_world_size()} ranks")
        mean = total[:-1] / count
        centered = xf - mean[None, :, None, None]
        var = _AllReduceSum.apply((centered * centered).sum(dim=(0, 2, 3))) / count
        out = centered * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: cumulative moving average, as in BatchNorm.
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var * (count / (count - 1)), alpha=factor)


def convert_portable_sync_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` by a PortableSyncBatchNorm2d sharing its parameters
    and buffers. Other BatchNorm kinds (1d/3d) are an error: they would silently stay per-rank."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, PortableSyncBatchNorm2d):
        if type(module) is not nn.BatchNorm2d:
            raise TypeError(f"model.sync_bn on CPU supports BatchNorm2d only, found {type(module).__name__}")
        return _portable_copy(module)
    for name, child in module.named_children():
        converted = convert_portable_sync_bn(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _portable_copy(bn: nn.BatchNorm2d) -> PortableSyncBatchNorm2d:
    new = PortableSyncBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias  # the same Parameters: optimizers keep them
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new
