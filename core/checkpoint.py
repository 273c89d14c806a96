"""Resumable checkpoints: written atomically with a SHA-256 beside them, verified on load.

A stage keeps its two newest step checkpoints. At start the newest one whose checksum and
unpickling both succeed is used; a damaged one is reported by path and skipped, so a run killed
while writing (or with a file cut short by a full disk) resumes from the previous good state.

Loading a run directory never executes code: every file is read with torch's weights-only
unpickler (tensors, dicts, lists, tuples, numbers, strings), so everything we save -- RNG states
included -- is made of those. A file with a valid checksum that holds anything else (a pickle
that would call a function on loading) is UnsafeCheckpoint: refused, naming the file, never
skipped like a damaged one, since a valid checksum means someone wrote it on purpose.

`read_state_dict` is the one reader of weights files: a run's checksummed ones, and plain state
dicts from elsewhere (evaluate.py --weights, a backbone's pretrained file), under the same rule.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import random
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from core.io import atomic_write_bytes, atomic_write_text
from core.errors import MissingInput, RunInputError

_STEP_FILE = re.compile(r"step_(\d+)\.pth$")


class CorruptCheckpoint(RuntimeError):
    """A damaged file (missing checksum, mismatch, cannot be read): the previous one may be used."""


class UnsafeCheckpoint(RunInputError):
    """A file with a valid checksum that holds more than tensors and plain data: refused."""


# Exactly the types torch's weights-only unpickler rebuilds (checked by exact type: a numpy
# float64 *is* a float subclass but pickles as a numpy global, which would be refused on load).
_PLAIN = (str, bytes, int, float, bool, complex, type(None), torch.Size, torch.dtype, torch.device)
_CONTAINERS = (dict, OrderedDict, list, tuple)


def check_plain(obj, where: str = "") -> None:
    """TypeError naming the first value that weights-only loading would refuse. Run before every
    save, so a state that could not be resumed fails when written, not hours later on resume."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return
    if type(obj) not in _CONTAINERS:
        raise TypeError(f"checkpoint value {where or '<root>'} is a {type(obj).__module__}."
                        f"{type(obj).__qualname__}: store tensors and plain Python types only "
                        f"(it would not load with weights_only=True)")
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for key, value in items:
        if isinstance(obj, dict) and type(key) not in _PLAIN:
            raise TypeError(f"checkpoint key {key!r} under {where or '<root>'} is a {type(key).__name__}")
        check_plain(value, f"{where}[{key!r}]")


def save_verified(obj, path) -> None:
    """torch.save `obj` to `path` atomically, then its checksum to `path.sha256`."""
    try:
        check_plain(obj)
    except TypeError as err:
        raise TypeError(f"{path}: {err}") from None
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(f"{path}.sha256", hashlib.sha256(data).hexdigest() + "\n")


def load_verified(path, map_location="cpu"):
    """Load a file written by save_verified. CorruptCheckpoint (naming it) if it is damaged,
    UnsafeCheckpoint if it is intact but would need more than the weights-only unpickler."""
    path = Path(path)
    digest_file = Path(f"{path}.sha256")
    if not digest_file.is_file():
        raise CorruptCheckpoint(f"{path}: no checksum file {digest_file.name} (write was interrupted)")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest_file.read_text().strip():
        raise CorruptCheckpoint(f"{path}: checksum mismatch (file truncated or corrupt)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # the weights-only unpickler refused an object
        raise UnsafeCheckpoint(f"{path}: refused to load: besides tensors and plain data it holds "
                               f"{_refused_object(err)}, and unpickling it could run code (files this "
                               f"code writes never do; remove the file)") from None
    except Exception as err:  # a checksum-valid file that still fails to unpickle is corrupt too
        raise CorruptCheckpoint(f"{path}: cannot be loaded: {err}") from err


# How read_state_dict treats a run's checksummed file (save_verified, {"model": state dict}).
CHECKSUM_MODES = ("required", "if_present", "ignored")


def read_state_dict(path, *, checksum: str, wrappers: tuple[str, ...] = ()) -> dict:
    """The state dict (parameter name -> tensor) a weights file holds, read without running code.

    `checksum` says which files are accepted:
      "required"    a run's own file: verified against its `.sha256` (CorruptCheckpoint or
                    UnsafeCheckpoint otherwise), its "model" entry returned;
      "if_present"  such a file when its `.sha256` is beside it, else a plain state dict (a file
                    given by path: evaluate.py --weights);
      "ignored"     a plain state dict, whatever lies beside it (a backbone's pretrained weights).
    A plain file is read with torch's weights-only unpickler and must be a non-empty dict of
    tensors, or hold one under the first key of `wrappers` it has (as other codebases save
    {"state_dict": ...}). Anything else is a ValueError naming the file."""
    if checksum not in CHECKSUM_MODES:
        raise ValueError(f"read_state_dict: checksum must be one of {CHECKSUM_MODES}, got {checksum!r}")
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"weights file not found: {path}")
    if checksum == "required" or (checksum == "if_present" and Path(f"{path}.sha256").is_file()):
        obj = load_verified(path)
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise ValueError(f"{path}: checksummed file holds no 'model' state dict")
        return obj["model"]
    obj = _load_plain(path)
    for key in wrappers:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        under = f", or one under {' / '.join(repr(k) for k in wrappers)}" if wrappers else ""
        hint = (" (a run's weights.pth needs its .sha256 file beside it)"
                if checksum == "if_present" and isinstance(obj, dict) and "model" in obj else "")
        raise ValueError(f"weights file {path} holds no state dict (expected a dict of parameter name -> "
                         f"tensor{under}){hint}")
    return obj


def _load_plain(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text would suggest weights_only=False, which could run code
        raise ValueError(f"refused weights file {path}: not a plain PyTorch state dict (torch.load with "
                         f"weights_only=True refused it: not a torch file, or it pickles Python objects besides "
                         f"tensors, and loading those could run code); save a plain state dict: "
                         f"torch.save(model.state_dict(), path)") from None
    except Exception as err:  # not a torch file at all (cut short, another format): torch says why at length
        raise ValueError(f"cannot read weights file {path}: not a plain PyTorch state dict "
                         f"({' '.join(str(err).split())[:200]})") from None


def _refused_object(err: Exception) -> str:
    """What the weights-only unpickler refused, e.g. 'GLOBAL builtins.exec' (its message is long
    and multi-line; our error stays one line)."""
    found = re.search(r"GLOBAL (\S+)|unrecognized function (\S+)|got (<class \S+>)", str(err))
    what = next((g for g in found.groups() if g), None) if found else None
    return f"a Python object ({what})" if what else "a Python object"


def rng_state() -> dict:
    """The global RNG states as tensors and plain numbers (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "python": random.getstate()}  # (version, tuple of 625 ints, None or float)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
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
    """The newest loadable step checkpoint's state, or None. Damaged ones are reported and
    skipped; an unsafe one (UnsafeCheckpoint) stops the run: it is not an accident to step over."""
    for _, path in step_checkpoints(folder):
        try:
            return load_verified(path)
        except CorruptCheckpoint as err:
            warn(f"warning: skipping damaged checkpoint: {err}")
    return None
