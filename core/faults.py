"""Test hooks for crash-safety and DDP tests. Unset (always, outside tests) they do nothing.

- `S4AL_DIE_AT=point:N` makes the process kill itself with SIGKILL the N-th time it reaches
  `point` — exactly what a pre-empted cluster job suffers.
- `S4AL_DISK_FULL=suffix:N` makes atomic writes of `*suffix` files fail from the N-th on (ENOSPC).
- `S4AL_PERTURB_RANK=R` nudges rank R's weights just before the ranks compare them at the end of
  a stage, so a test can watch the agreement check catch ranks that drifted apart."""
from __future__ import annotations

import errno
import os
import signal

import torch

_seen: dict[str, int] = {}


def reached(point: str) -> None:
    spec = os.environ.get("S4AL_DIE_AT")
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def disk_full(path) -> None:
    """`S4AL_DISK_FULL=suffix:N`: the N-th atomic write of a file named `*suffix` fails with
    ENOSPC, as on a full disk (after its bytes went to the temporary file)."""
    spec = os.environ.get("S4AL_DISK_FULL")
    if not spec:
        return
    suffix, _, count = spec.partition(":")
    if not str(path).endswith(suffix):
        return
    key = f"disk_full{suffix}"
    _seen[key] = _seen.get(key, 0) + 1
    if _seen[key] >= int(count or 1):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@torch.no_grad()
def perturb_rank(model, rank: int) -> None:
    """Add 1e-3 to one weight of `model` on the rank named by S4AL_PERTURB_RANK (no-op if unset)."""
    spec = os.environ.get("S4AL_PERTURB_RANK")
    if not spec or int(spec) != rank:
        return
    first = next(model.parameters())
    first[(0,) * first.dim()] += 1e-3  # by index: weights may be channels_last
