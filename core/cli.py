"""What every script shares: its command line, the config it loads, and how it ends (exit codes,
one `error:` line for bad input, provenance lines for the log)."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

from core.config import ConfigError, load_config
from core.errors import InputError, NonFiniteLoss
from core.io import WriteFailed, printable

# Exit statuses of the scripts: 0 done, 2 bad input (one `error:` line), and this one when a query
# stage waits for a person's labels (query.oracle=human; summary.json state "waiting_for_labels").
EXIT_AWAITING_LABELS = 3

def config_parser(description: str) -> argparse.ArgumentParser:
    """A script's parser with what every script takes: --config and key.sub=value overrides
    (parse with `parse_intermixed_args`: options and overrides in any order)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="config name under configs/ (e.g. table1/camvid/row5) or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return parser


def parse_args(description: str) -> argparse.Namespace:
    """The training scripts' command line."""
    parser = config_parser(description)
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve config, index data, build the model, print a summary, exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an existing run directory made with a different config")
    parser.add_argument("--import-partial", action="store_true",
                        help="query.oracle=human: import the label files written so far; the other "
                             "queried images stay unlabelled (a later query may ask for them again)")
    return parser.parse_intermixed_args()  # options and key=value overrides in any order


def provenance() -> str:
    """The first lines a run writes to log.txt: its command line, package versions, git commit."""
    import platform
    import subprocess
    import numpy
    import torch
    import torchvision
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (git not available)"
    import shlex
    return (f"command: {shlex.join([sys.executable] + sys.argv)}\n"
            f"versions: python {platform.python_version()}, torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, numpy {numpy.__version__}\n"
            f"git commit: {commit}")


def load_config_or_exit(args):
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as err:
        fail(f"config error: {err}")


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit (used for bad input before any work).
    Under torchrun every rank exits, and rank 0 alone prints: the line appears once."""
    if "tqdm" in sys.modules:  # a progress bar cut short: end its line, so the error has its own
        for bar in list(getattr(sys.modules["tqdm"].tqdm, "_instances", ())):
            bar.close()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"error: {printable(' '.join(str(message).split()))}", file=sys.stderr)
    raise SystemExit(2)


def setup_or_exit(setup, *args):
    """`setup(*args)`, a run's checks and start: a bad config, data set, weights file or output
    folder (ValueError, OSError) becomes `fail(message)`: one `error:` line, exit code 2, before
    any stage runs. Mid-run errors are `exit_on_input_error`'s: there only bad-input kinds are
    turned into a line, and everything else is a bug that keeps its traceback."""
    try:
        return setup(*args)
    except (ValueError, OSError) as err:
        fail(str(err))


@contextlib.contextmanager
def exit_on_input_error() -> Iterator[None]:
    """Around a script's stage loop: bad input found mid-run (an InputError such as an unreadable image,
    a write that failed, a non-finite loss) becomes `fail(message)` (one `error:` line, exit code
    2) instead of a traceback. Any other exception is a bug and keeps its traceback."""
    try:
        yield
    except (InputError, WriteFailed, NonFiniteLoss) as err:
        # Bad input met mid-run: a file damaged or gone since the scan (core.errors.MissingInput;
        # a bare FileNotFoundError is a bug's, and keeps its traceback), a full disk, a loss that
        # left the finite numbers. Raised in a loader worker, it arrives with the worker's
        # traceback in its text, whose last line is "<module>.<Class>: message".
        lines = [line for line in str(err).splitlines() if line.strip()]
        message = lines[-1] if lines else type(err).__name__
        fail(message.removeprefix(f"{type(err).__module__}.{type(err).__qualname__}: "))
