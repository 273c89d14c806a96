"""Resumable checkpoints: written atomically with a SHA-256 beside them, verified on load.

A stage keeps its two newest step checkpoints. At start the newest one whose checksum and
unpickling both succeed is used; a bad one is reported by path and skipped, so a run killed
while writing (or with a file cut short by a full disk) resumes from the previous good state.
"""
from __future__ import annotations

import hashlib
import io
import random
import re
from pathlib import Path

import numpy as np
import torch

from engine.io import atomic_write_bytes, atomic_write_text

_STEP_FILE = re.compile(r"step_(\d+)\.pth$")


class CorruptCheckpoint(RuntimeError):
    pass


def save_verified(obj, path) -> None:
    """torch.save `obj` to `path` atomically, then its checksum to `path.sha256`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(f"{path}.sha256", hashlib.sha256(data).hexdigest() + "\n")


def load_verified(path, map_location="cpu"):
    """Load a file written by save_verified; CorruptCheckpoint (naming it) if it is damaged."""
    path = Path(path)
    digest_file = Path(f"{path}.sha256")
    if not digest_file.is_file():
        raise CorruptCheckpoint(f"{path}: no checksum file {digest_file.name} (write was interrupted)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest_file.read_text().strip():
        raise CorruptCheckpoint(f"{path}: checksum mismatch (file truncated or corrupt)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as err:  # a checksum-valid file that still fails to unpickle is corrupt too
        raise CorruptCheckpoint(f"{path}: cannot be loaded: {err}") from err


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_checkpoints(folder) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint in `folder`, newest first."""
    found = []
    for p in Path(folder).glob("step_*.pth"):
        m = _STEP_FILE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save_step(folder, step: int, state: dict, keep: int = 2) -> Path:
    path = Path(folder) / f"step_{step:08d}.pth"
    save_verified(state, path)
    for _, old in step_checkpoints(folder)[keep:]:
        old.unlink()
        Path(f"{old}.sha256").unlink(missing_ok=True)
    return path


def load_latest(folder, warn=print):
    """The newest loadable step checkpoint's state, or None. Damaged ones are reported."""
    for _, path in step_checkpoints(folder):
        try:
            return load_verified(path)
        except CorruptCheckpoint as err:
            warn(f"warning: skipping damaged checkpoint: {err}")
    return None
