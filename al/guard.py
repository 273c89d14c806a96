"""What protects a run directory and the files around it.

- `RunLock`: one process (one job: rank 0 holds it for its ranks) per run directory, through a
  POSIX record lock on `<run>/.lock`; the kernel releases it when the holder dies, even by SIGKILL.
- `check_overwrite` / `clear_run`: `--overwrite` deletes only a run directory of this project
  (recognised by the names a run writes), never a folder that is or holds the data set, the
  configs or the project, and never a person's annotation labels (moved aside first, where the
  message says).
- `check_links`: a run reads only its own files: a symlink in it that resolves outside is refused.
- `read_record`: a damaged or missing run record becomes one line naming it, with what to do.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Callable, TypeVar

import yaml

from core import distributed as dist_utils
from core.config import CONFIG_DIR, PROJECT_ROOT, ConfigError
from core.errors import RunInputError

LOCK = ".lock"
# Every name a run writes at its top level (al/rundir.py's layout), and the temporaries of
# its atomic writers; a folder holding anything else is not a run, and --overwrite refuses it.
_RUN_NAMES = {"config.yaml", "log.txt", "summary.json", "data_check.npz", "tensorboard", LOCK}
_RUN_PATTERN = re.compile(r"^(\d\d_.+|\..+\.tmp-.+|\..+\.partial|\d\d_.+\.copying)$")
ANNOTATOR_LABELS = ("annotate", "labels")  # <run>/NN_stage/annotate/labels: a person's work

T = TypeVar("T")


# --------------------------------------------------------------------------- the lock
class RunLock:
    """A POSIX record lock (fcntl F_SETLK, Python's `lockf`) on `<root>/.lock`. The file stays
    empty (taking the lock changes nothing in the run directory); the kernel's lock table says who
    holds it.

    Not flock: a flock belongs to the open file, which forked children share, so after a kill -9
    of the run its DataLoader workers kept the directory locked until they noticed (about 5 s,
    measured). A record lock belongs to the process alone and is not inherited by fork. Its one
    pitfall, that closing any descriptor of the file releases it, is why nothing else opens it."""

    def __init__(self, root: Path):
        self.root, self.fd = Path(root), None

    def acquire(self) -> "RunLock":
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # a write lock needs a writable descriptor
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: F_SETLK may answer either
            os.close(fd)
            raise ConfigError(f"output_dir {self.root} is in use by process {lock_holder(self.root / LOCK)} "
                              f"(another run on the same directory); wait for it to end or stop it, then run "
                              f"again") from None
        self.fd = fd
        return self


def lock_holder(path: Path) -> str:
    """The PID holding the record lock on `path`, from Linux's /proc/locks ("unknown" elsewhere)."""
    st = os.stat(path)
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            rows = [line.split() for line in f]
    except OSError:
        return "unknown"
    # "1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; waiting requests carry a "->" field.
    held = [r for r in rows if len(r) >= 6 and r[1] == "POSIX" and r[0] != "->" and "->" not in r]
    for match in (lambda r: r[5] == exact, lambda r: r[5].rsplit(":", 1)[-1] == str(st.st_ino)):
        found = [r[4] for r in held if match(r)]
        if found:
            return found[0]
    return "unknown"


_held: dict[str, RunLock] = {}  # kept open for the life of the process


def lock(root: Path, ctx) -> None:
    """Take the run directory's lock if it exists and this process does not hold it yet (rank 0
    for the whole job; every rank gets the verdict, so all of them stop together)."""
    root, error = Path(root), None
    key = os.path.realpath(root)
    if ctx.is_main and root.is_dir() and key not in _held:
        try:
            _held[key] = RunLock(root).acquire()
        except ConfigError as err:
            error = str(err)
    error = dist_utils.broadcast_object(error, ctx)
    if error is not None:
        raise ConfigError(error)


# --------------------------------------------------------------------------- --overwrite
def _foreign_entry(root: Path) -> str | None:
    """The first top-level entry of `root` that a run does not write, or None."""
    for entry in sorted(os.listdir(root)):
        if entry not in _RUN_NAMES and not _RUN_PATTERN.match(entry):
            return entry
    return None


def _protected(root: Path, cfg) -> str | None:
    """What `root` is or contains that --overwrite must never delete, or None."""
    real = Path(os.path.realpath(root))
    keep = {"data.root (the data set)": cfg.data.root, "the configs": CONFIG_DIR, "the project": PROJECT_ROOT,
            "your home folder": Path.home(), "the current folder": Path.cwd()}
    if cfg.data.cache_dir:
        keep["data.cache_dir"] = cfg.data.cache_dir
    for what, path in keep.items():
        if Path(os.path.realpath(path)).is_relative_to(real):
            return f"{what} ({path})"
    return None


def annotator_label_dirs(root: Path) -> list[Path]:
    """Folders of a person's label files in the run (non-empty `NN_stage/annotate/labels/`)."""
    return sorted(p for p in Path(root).glob("*/" + "/".join(ANNOTATOR_LABELS)) if p.is_dir() and any(p.iterdir()))


def labels_aside(root: Path) -> Path:
    """Where --overwrite moves a person's label files: a sibling folder named after the run."""
    root = Path(root)
    candidate, n = root.with_name(f"{root.name}.annotator_labels"), 1
    while candidate.exists():
        n += 1
        candidate = root.with_name(f"{root.name}.annotator_labels-{n}")
    return candidate


def describe_overwrite(root: Path) -> str:
    """What --overwrite would do to `root`, for every message that suggests it."""
    files = sum(len(files) for _, _, files in os.walk(root))
    text = f"--overwrite deletes the run directory {root} ({files} files)"
    labels = annotator_label_dirs(root)
    if labels:
        text += f" after moving the annotator's label files ({len(labels)} folders) to {labels_aside(root)}"
    return text


def check_overwrite(root: Path, cfg) -> None:
    """Refuse --overwrite on anything but a run directory of this project."""
    root = Path(root)
    if not root.exists():
        return
    if not root.is_dir():
        raise ConfigError(f"output_dir {root} is a file, not a run directory; --overwrite deletes only run directories")
    protected = _protected(root, cfg)
    if protected is not None:
        raise ConfigError(f"output_dir {root} is or contains {protected}; --overwrite never deletes it "
                          f"(choose another output_dir)")
    foreign = _foreign_entry(root)
    if foreign is not None or not (root / "config.yaml").is_file():
        why = f"it holds {foreign!r}, which a run does not write" if foreign else "it has no config.yaml"
        raise ConfigError(f"output_dir {root} is not a run directory ({why}); --overwrite deletes only run "
                          f"directories: choose another output_dir, or empty it yourself")


def clear_run(root: Path) -> Path | None:
    """Empty a run directory checked by check_overwrite, keeping the folder and its lock (held by
    this process). A person's label files are moved aside first; returns where, or None."""
    root = Path(root)
    moved = None
    labels = annotator_label_dirs(root)
    if labels:
        moved = labels_aside(root)
        for folder in labels:
            target = moved / folder.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, target)
    for entry in os.listdir(root):
        path = root / entry
        if entry == LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return moved


# --------------------------------------------------------------------------- reading run files
def check_links(folder: Path) -> None:
    """Refuse a symlink under `folder` that resolves outside it: a run reads only its own files."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    inside = os.path.realpath(folder)
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent) / name
            if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(inside):
                raise RunInputError(f"{path}: a symlink to {os.path.realpath(path)}, outside the run directory "
                                    f"{folder}; a run reads only its own files (replace the link by a copy)")


DAMAGED = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile,
           yaml.YAMLError)


def read_record(path: Path, read: Callable[[Path], T], remedy: str | Callable[[], str]) -> T:
    """`read(path)`, with any failure to read or parse it turned into one line naming the file
    and saying what to do (`remedy`, or a function that says it, called only then). A file
    refused as unsafe (UnsafeCheckpoint) keeps its own message."""
    path = Path(path)
    advice = remedy if callable(remedy) else (lambda: remedy)
    if not path.is_file():
        raise RunInputError(f"{path}: run record missing; {advice()}")
    try:
        return read(path)
    except RunInputError:
        raise
    except DAMAGED as err:
        why = " ".join(str(err).split())[:200]
        raise RunInputError(f"{path}: run record damaged ({type(err).__name__}: {why}); {advice()}") from None
