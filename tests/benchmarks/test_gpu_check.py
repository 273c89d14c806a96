"""benchmarks/gpu_check.py: its --smoke run (every part on the CPU) so the GPU check does not rot,
the host-read counter against hand-made traces, the time shares, and the row-2 arithmetic from a
checkpoint of a run stopped at its deadline."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from benchmarks import gpu_check, host_syncs
from tests.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(out), "--smoke"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_smoke_runs_every_part_to_the_end(smoke):
    result, md = smoke
    assert list(result["parts"]) == ["speed", "host_syncs", "reco", "torchrun", "camvid_row2"]
    assert {name: part["status"] for name, part in result["parts"].items()} == dict.fromkeys(result["parts"], "done")
    assert md.startswith("### gpu_check: CPU") and "commit " in md and f"torch {result['machine']['torch']}" in md


def test_smoke_measures_every_config_family(smoke):
    rows = smoke[0]["parts"]["speed"]["rows"]
    assert [(r["config"], r["overrides"]) for r in rows] == [(c, o) for _, c, o in gpu_check.FAMILIES]
    for row in rows:
        fp32 = row["modes"]["none"]
        assert fp32["step_s"] > 0 and fp32["images_per_s"] == pytest.approx(sum(row["batch"]) / fp32["step_s"])
    full = next(r for r in rows if r["config"] == gpu_check.SMOKE_ALL_MODES)
    assert all(isinstance(full["modes"][m], dict) for m in gpu_check.MODES)  # the bf16 and GradScaler paths ran


def test_smoke_counts_the_trainers_host_reads(smoke):
    part = smoke[0]["parts"]["host_syncs"]
    assert part["control_reads_per_step"] == 1.0  # one .item() per step is seen as one
    bf16 = part["bf16"]
    # On a CPU the trainer's only read per step is ReCo's label check (losses/reco.py checks on the
    # host where that is free, and with a device-side assert on CUDA): one per step, logging or not.
    assert bf16["non_logging"]["steps"] > 0 and bf16["logging"]["steps"] > 0
    assert bf16["non_logging"]["max"] == 1 and bf16["non_logging"]["host_reads_mean"] == 1.0
    assert bf16["by_name"] == {host_syncs.HOST_READ: bf16["non_logging"]["steps"] + bf16["logging"]["steps"]}


def test_smoke_runs_the_demo_under_torchrun_in_a_process_group(smoke):
    part = smoke[0]["parts"]["torchrun"]
    assert part["returncode"] == 0 and part["backend"] == "gloo" and part["world_size"] == 1
    assert [s["name"] for s in part["stages"]] == ["teacher", "student", "query1"]
    assert part["stages"][2]["labeled_pixel_pct"] > part["stages"][1]["labeled_pixel_pct"]


def test_smoke_trains_camvid_row2_with_efficientnet_lite0(smoke):
    part = smoke[0]["parts"]["camvid_row2"]
    assert part["steps_done"] == part["of_steps"] == 3 and part["images_per_s"] > 0
    assert "model.backbone=efficientnet_lite0" in part["command"] and "model.pretrained=imagenet" in part["command"]


def test_a_spent_budget_still_writes_both_files(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(tmp_path), "--smoke", "--budget-s", "0",
                             "--only", "speed", "--only", "camvid_row2"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert {k: v["status"] for k, v in parts.items()} == dict.fromkeys(["speed", "camvid_row2"],
                                                                       "not run: time share spent")
    assert (tmp_path / "gpu_check.md").read_text().startswith("### gpu_check:")


# --------------------------------------------------------------------------- pieces, by hand
def _mark(t):
    return ("Optimizer.zero_grad#SGD.zero_grad", t)


def test_host_reads_are_counted_in_the_step_they_fall_in():
    events = [(host_syncs.HOST_READ, 5.0),  # before the first step: not counted
              _mark(10.0), ("aten::conv2d", 11.0),
              _mark(20.0), (host_syncs.HOST_READ, 20.0), ("cudaStreamSynchronize", 25.0), ("cudaMemcpyAsync", 26.0),
              _mark(30.0), ("cudaMemcpy", 39.9)]
    assert host_syncs.syncs_per_step(events) == [
        Counter(), Counter({host_syncs.HOST_READ: 1, "cudaStreamSynchronize": 1}), Counter({"cudaMemcpy": 1})]


def test_summary_separates_logging_steps_and_leaves_out_warmup_and_the_last_step():
    # 8 steps, log_every 3: steps 2 and 5 (0-based) log. Reads: 4 in warm-up step 0, 1 in each
    # logging step, 2 in step 3, 9 in the last one.
    steps = [Counter({host_syncs.HOST_READ: n}) for n in (4, 0, 1, 2, 0, 1, 0, 9)]
    s = host_syncs.summarize(steps, log_every=3, warmup=1)
    assert s["per_step"] == [4, 0, 1, 2, 0, 1, 0, 9]
    assert s["logging"] == {"steps": 2, "max": 1, "mean": 1.0, "host_reads_mean": 1.0, "cuda_syncs_mean": 0.0}
    assert s["non_logging"]["steps"] == 4 and s["non_logging"]["max"] == 2 and s["non_logging"]["mean"] == 0.5
    assert s["by_name"] == {host_syncs.HOST_READ: 4}


def test_time_left_unused_goes_to_the_later_parts(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(gpu_check.time, "monotonic", lambda: now[0])
    clock = gpu_check.Clock(100.0, ["speed", "reco", "camvid_row2"])
    total = sum(gpu_check.SHARES[p] for p in ("speed", "reco", "camvid_row2"))
    assert clock.start("speed") == pytest.approx(100 * gpu_check.SHARES["speed"] / total)
    now[0] = 10.0  # speed used 10 s of its share
    rest = gpu_check.SHARES["reco"] + gpu_check.SHARES["camvid_row2"]
    assert clock.start("reco") == pytest.approx(10 + 90 * gpu_check.SHARES["reco"] / rest)
    now[0] = 20.0
    assert clock.start("camvid_row2") == pytest.approx(100.0)  # the last part takes what is left


def test_row2_speed_and_full_row_time_from_the_newest_checkpoint(tmp_path):
    from core import checkpoint as ckpt
    from core.config import load_config
    cfg = load_config("table1/camvid/row2")  # teacher: 100 epochs x 50 steps, batch 4
    folder = tmp_path / "00_teacher" / "checkpoints"
    folder.mkdir(parents=True)
    ckpt.save_step(folder, 40, {"step": 40, "train_time_s": 9.0})
    ckpt.save_step(folder, 50, {"step": 50, "train_time_s": 10.0})
    got = gpu_check.row_progress(cfg, tmp_path, {"timed_out": True, "returncode": -15, "log": "x"})
    assert got["status"] == "partial: time share spent" and (got["steps_done"], got["of_steps"]) == (50, 5000)
    assert got["images_per_s"] == pytest.approx(50 * 4 / 10.0)
    assert got["full_stage_train_s_estimate"] == pytest.approx(10.0 / 50 * 5000)
