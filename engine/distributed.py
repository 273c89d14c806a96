"""Process group setup from torchrun's environment, and the few collectives the scripts use.

Plain `python script.py` is one process (no process group); `torchrun --nproc_per_node N`
sets RANK / WORLD_SIZE / LOCAL_RANK and we join NCCL on CUDA or gloo on CPU. No
`--local-rank` argument plumbing: everything comes from the environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` means CUDA when present. Asking for CUDA without it is an error, not a fallback."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device=cuda but torch.cuda.is_available() is False "
                               "(use runtime.device=cpu, or install a CUDA build of torch)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(requested_device: str = "auto") -> DistContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


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


def broadcast_buffers(model, ctx: DistContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    if ctx.distributed:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)
