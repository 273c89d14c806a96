"""The scripts cannot be made to execute code by a run file (issue 14.5): a crafted weights file whose
pickle would run code and whose checksum is valid is refused as one `error:` line naming it -- a
finished stage's weights.pth, one reused through init_from, a step checkpoint being resumed -- and
the code never runs. (The loaders themselves: tests/core/test_checkpoint.py.)"""
from __future__ import annotations

import shutil

import pytest

from tests.helpers import plant_crafted, run_script, write_config


def _copy_run(al_run, tmp_path, name):
    """A copy of the finished tiny AL run, with a config whose output_dir is the copy."""
    from core.config import load_config, save_config
    run = tmp_path / name
    shutil.copytree(al_run["run"], run)
    cfg = write_config(tmp_path, "tiny_al", run, al_run["data"])
    save_config(load_config(str(cfg)), run / "config.yaml")
    return cfg, run


def _assert_refused(result, path, marker):
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: refused"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_script_refuses_crafted_weights_of_a_finished_stage(al_run, tmp_path):
    cfg, run = _copy_run(al_run, tmp_path, "run")
    plant_crafted(run / "00_teacher" / "weights.pth", tmp_path / "ran")
    _assert_refused(run_script("train_al.py", cfg), run / "00_teacher" / "weights.pth", tmp_path / "ran")


@pytest.mark.slow
def test_script_refuses_crafted_weights_reused_through_init_from(al_run, tmp_path):
    source_cfg, source = _copy_run(al_run, tmp_path, "source")
    plant_crafted(source / "00_teacher" / "weights.pth", tmp_path / "ran")
    cfg = write_config(tmp_path, "reuser", tmp_path / "reuser", al_run["data"], extra=f"init_from: {source_cfg}\n")
    # The source's weights are checked before its stage folder is copied: the error names the
    # source file, and nothing of it reaches the new run.
    _assert_refused(run_script("train_al.py", cfg), source / "00_teacher" / "weights.pth", tmp_path / "ran")
    assert not (tmp_path / "reuser" / "00_teacher").exists()


@pytest.mark.slow
def test_script_refuses_a_crafted_step_checkpoint_on_resume(al_run, tmp_path):
    cfg, run = _copy_run(al_run, tmp_path, "run")
    stage = run / "02_query1"
    (stage / "metrics.json").unlink()  # the last stage is unfinished again: it will resume
    (stage / "checkpoints").mkdir()
    plant_crafted(stage / "checkpoints" / "step_00000002.pth", tmp_path / "ran")
    _assert_refused(run_script("train_al.py", cfg), stage / "checkpoints" / "step_00000002.pth", tmp_path / "ran")
