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

from core.io import atomic_write_text


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
        atomic_write_text(probe, token)  # never seen half-written by another rank
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
