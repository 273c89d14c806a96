"""Issue 8's promise, killed anywhere (a real SIGKILL) -> the same result after a restart: one
process at five points of the AL run, train_ssl.py, a truncated checkpoint, two DDP ranks; and
Ctrl-C prints one line naming the checkpoint the run resumes from."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import (DDP_STAGES, REPO, assert_same_weights, final_weights, leftover_temporaries, pool_cells,
                           run_script, script_env, summary_stages, write_config,
                           write_ssl_config)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("point", [
    "train_step:4",          # mid-phase (teacher, after its step-2 checkpoint)
    "train_step:8",          # mid-phase of the student
    "pseudo_png:3",          # while writing pseudo labels
    "before_reveal:1",       # between query selection and reveal
    "before_replace.pth:2",  # while saving a checkpoint (temporary written, not yet renamed)
])
def test_killed_run_resumes_to_the_same_result(al_run, tmp_path, point):
    cfg = write_config(tmp_path, "tiny_al", tmp_path / "run", al_run["data"])
    killed = run_script("train_al.py", cfg, die_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_script("train_al.py", cfg)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(al_run["run"]))
    assert (pool_cells(tmp_path / "run" / "02_query1" / "pool.npz")
            == pool_cells(al_run["run"] / "02_query1" / "pool.npz")).all()
    ours = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]
    theirs = json.loads((al_run["run"] / "summary.json").read_text())["stages"]
    assert [s["miou"] for s in ours] == [s["miou"] for s in theirs]
    assert not leftover_temporaries(tmp_path / "run")


def test_killed_ssl_run_resumes_to_the_same_result(ssl_run, tmp_path):
    cfg = write_ssl_config(tmp_path, "tiny_ssl", tmp_path / "run", ssl_run["data"], ssl_run["labeled"])
    killed = run_script("train_ssl.py", cfg, die_at="train_step:9")  # round1, after the teacher's 6 steps
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_script("train_ssl.py", cfg)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(ssl_run["run"]))
    ours = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]
    theirs = json.loads((ssl_run["run"] / "summary.json").read_text())["stages"]
    assert [s["miou"] for s in ours] == [s["miou"] for s in theirs]


def test_truncated_checkpoint_is_reported_and_the_previous_one_used(al_run, tmp_path):
    cfg = write_config(tmp_path, "tiny_al", tmp_path / "run", al_run["data"])
    assert run_script("train_al.py", cfg, die_at="train_step:5").returncode == -signal.SIGKILL
    ckpts = sorted((tmp_path / "run" / "00_teacher" / "checkpoints").glob("step_*.pth"))
    assert [p.name for p in ckpts] == ["step_00000002.pth", "step_00000004.pth"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])  # a disk that filled up mid-write
    resumed = run_script("train_al.py", cfg)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"skipping damaged checkpoint: {ckpts[-1]}" in resumed.stdout
    assert "resuming at step 2/6" in resumed.stdout
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(al_run["run"]))


# --------------------------------------------------------------------------- two gloo ranks
# DDP_STAGES and the `ddp_run` fixture (one uninterrupted 2-rank run) are in tests/helpers.py
# and tests/conftest.py.
def test_killed_two_rank_run_resumes_to_the_same_result(ddp_run, tmp_path):
    cfg = write_config(tmp_path, "ddp", tmp_path / "run", ddp_run["data"], stages=DDP_STAGES)
    killed = run_script("train_al.py", cfg, nproc=2, die_at="train_step:9")  # every rank dies there
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-2000:]
    assert not (tmp_path / "run" / "01_query1" / "metrics.json").exists()
    assert [p.name for p in (tmp_path / "run" / "01_query1" / "checkpoints").glob("step_*.pth")] == \
        ["step_00000002.pth"]
    resumed = run_script("train_al.py", cfg, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[query1] resuming at step 2/4" in resumed.stdout
    ours, theirs = tmp_path / "run", ddp_run["run"]
    assert [s["miou"] for s in summary_stages(ours)] == [s["miou"] for s in summary_stages(theirs)]
    assert [s["per_class_iou"] for s in summary_stages(ours)] == [s["per_class_iou"] for s in summary_stages(theirs)]
    for stage in ("00_teacher", "01_query1"):
        assert (pool_cells(ours / stage / "pool.npz") == pool_cells(theirs / stage / "pool.npz")).all()
    assert_same_weights(final_weights(ours), final_weights(theirs))
    digests = json.loads((ours / "01_query1" / "metrics.json").read_text())["weights_sha256_per_rank"]
    assert digests == json.loads((theirs / "01_query1" / "metrics.json").read_text())["weights_sha256_per_rank"]


# --------------------------------------------------------------------------- Ctrl-C
@pytest.mark.slow
def test_ctrl_c_prints_one_line_naming_the_checkpoint_and_log_starts_with_provenance(al_run, tmp_path):
    cfg = write_config(tmp_path, "ctrl_c", tmp_path / "run", al_run["data"])
    env = script_env("2")
    # The run starts as from a terminal, with Ctrl-C's default action: a suite launched in the
    # background (nohup ... &) hands its children SIGINT ignored, and Python then keeps it ignored.
    proc = subprocess.Popen([sys.executable, "train_al.py", "--config", str(cfg), "stages.teacher.epochs=40"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoints = tmp_path / "run" / "00_teacher" / "checkpoints"
    deadline = time.time() + 240
    while not list(checkpoints.glob("step_*.pth")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint's writer finish
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    newest = max(checkpoints.glob("step_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    assert last.startswith("interrupted: run the same command again to resume 00_teacher from ")
    assert str(newest) in last
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert "command: " in log[0] and "train_al.py --config" in log[0] and "stages.teacher.epochs=40" in log[0]
    assert "versions: python" in log[1] and "torch" in log[1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert f"git commit: {commit}" in log[2]
