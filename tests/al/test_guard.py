"""al/guard.py: --overwrite never deletes the configs or the project and moves the annotator's labels
aside; the run directory's lock is released when its holder is killed."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, png_bytes


@pytest.mark.slow
def test_overwrite_never_deletes_the_configs_or_the_project(tmp_path):
    from core.config import CONFIG_DIR, PROJECT_ROOT, ConfigError, load_config
    from al.guard import check_overwrite
    cfg = load_config("demo", [f"data.root={tmp_path}"])
    for folder in (CONFIG_DIR, PROJECT_ROOT, PROJECT_ROOT.parent):
        with pytest.raises(ConfigError, match="never deletes it"):
            check_overwrite(folder, cfg)


@pytest.mark.slow
def test_overwrite_moves_the_annotators_labels_aside(human_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(human_run["run"], run, symlinks=True)
    labels = run / "01_query1" / "annotate" / "labels"
    (labels / "x.png").write_bytes(png_bytes(np.zeros((48, 64), np.uint8)))
    from al.guard import annotator_label_dirs, check_overwrite, clear_run, describe_overwrite
    from core.config import load_config
    cfg = load_config(str(human_run["config"]), [f"output_dir={run}"])
    check_overwrite(run, cfg)
    aside = tmp_path / "run.annotator_labels"
    assert f"after moving the annotator's label files (1 folders) to {aside}" in describe_overwrite(run)
    assert annotator_label_dirs(run) == [labels]
    assert clear_run(run) == aside
    assert (aside / "01_query1" / "annotate" / "labels" / "x.png").is_file()
    assert sorted(os.listdir(run)) == [".lock"]


_HOLD = """
import os, sys, time
from al.guard import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_holder_releases_the_lock(tmp_path):
    from core.config import ConfigError
    from al.guard import RunLock
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    RunLock(tmp_path).acquire()  # the kernel released it with the process


_HOLD_WITH_WORKER = """
import os, sys, time
from al.guard import RunLock
RunLock(sys.argv[1]).acquire()
worker = os.fork()  # as a DataLoader worker is forked: it inherits every descriptor
if worker == 0:
    time.sleep(600)
    os._exit(0)
print(worker, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_lock_is_free_the_moment_its_holder_is_killed_though_its_forked_worker_lives(tmp_path):
    from al.guard import RunLock
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_WITH_WORKER, str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the worker is still alive (raises if not)
        RunLock(tmp_path).acquire()  # at once: a resume after kill -9 need not wait for the worker
    finally:
        os.kill(worker, signal.SIGKILL)
