"""A test hook for crash-safety tests: `S4AL_DIE_AT=point:N` makes the process kill itself with
SIGKILL the N-th time it reaches `point` — exactly what a pre-empted cluster job suffers. Unset
(always, outside tests) it does nothing."""
from __future__ import annotations

import os
import signal

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
