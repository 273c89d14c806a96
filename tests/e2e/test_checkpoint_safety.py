"""Loading a run directory cannot execute code (issue 14.5).

Every run file is loaded with torch's weights-only unpickler. A crafted file whose pickle would
run code (here: create a marker file) and whose checksum is valid must be refused with
UnsafeCheckpoint naming it -- as a step checkpoint being resumed, as a finished stage's
weights.pth, through init_from, and from the scripts as one `error:` line -- and the marker must
never appear. Everything the trainer saves (RNG states included) must load weights-only."""
from __future__ import annotations

import hashlib
import random
import shutil

import numpy as np
import pytest
import torch

from core import checkpoint as ckpt
from models.build import load_weights
from tests.helpers import run_script, write_config


class _RunsCode:
    """Unpickling this calls exec(): it creates `marker`. Harmless here, fatal in a real attack."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def plant_crafted(path, marker) -> None:
    """A weights-like file with a code-running object inside, and a valid .sha256 beside it."""
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    (path.parent / f"{path.name}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def test_the_crafted_file_really_runs_code_when_fully_unpickled(tmp_path):
    # The control: without weights_only the payload runs, so the refusals below mean something.
    plant_crafted(tmp_path / "evil.pth", tmp_path / "ran")
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert (tmp_path / "ran").exists()


def test_crafted_step_checkpoint_is_refused_not_skipped(tmp_path):
    ckpt.save_step(tmp_path, 2, {"step": 2})
    evil = tmp_path / "step_00000004.pth"  # the newest: the one a resume would pick
    plant_crafted(evil, tmp_path / "ran")
    with pytest.raises(ckpt.UnsafeCheckpoint) as caught:
        ckpt.load_latest(tmp_path, warn=pytest.fail)  # not reported-and-skipped like a damaged file
    message = str(caught.value)
    assert message.startswith(f"{evil}: refused") and "(exec)" in message.replace("builtins.", "") and "\n" not in message
    assert not (tmp_path / "ran").exists()


def test_crafted_stage_weights_are_refused(tmp_path):
    stage = tmp_path / "00_teacher"
    stage.mkdir()
    plant_crafted(stage / "weights.pth", tmp_path / "ran")
    with pytest.raises(ckpt.UnsafeCheckpoint, match=str(stage / "weights.pth")):
        load_weights(stage / "weights.pth")
    assert not (tmp_path / "ran").exists()


def test_damaged_file_is_still_corrupt_not_unsafe(tmp_path):
    plant_crafted(tmp_path / "evil.pth", tmp_path / "ran")
    (tmp_path / "evil.pth").write_bytes((tmp_path / "evil.pth").read_bytes()[:-10])  # checksum now wrong
    with pytest.raises(ckpt.CorruptCheckpoint, match="checksum mismatch"):
        ckpt.load_verified(tmp_path / "evil.pth")


def _draws():
    return torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)]


def test_rng_states_round_trip_through_weights_only_loading(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal(1)  # numpy now holds a cached second gaussian: part of its state
    state = ckpt.rng_state()
    expected = _draws()  # how the streams continue from the captured state
    ckpt.save_verified({"rng": [state]}, tmp_path / "rng.pth")
    loaded = ckpt.load_verified(tmp_path / "rng.pth")["rng"][0]
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt.set_rng_state(loaded)
    got = _draws()
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_full_trainer_state_saves_and_loads_weights_only(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    scaler.scale(model(torch.randn(2, 3, 8, 8)).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    generator = torch.Generator().manual_seed(5)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "generator": [generator.get_state()], "rng": [ckpt.rng_state()], "step": 4, "best_miou": None,
             "evals": [{"step": 2, "miou": 12.5}], "skipped_steps": 0, "train_time_s": 3.5}
    ckpt.save_step(tmp_path, 4, state)
    loaded = ckpt.load_latest(tmp_path)
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    assert loaded["scaler"] == scaler.state_dict() and loaded["evals"] == state["evals"]


def test_saving_what_weights_only_cannot_load_fails_at_save_time(tmp_path):
    # np.float64 is a float subclass, yet pickles as a numpy global that weights-only refuses:
    # a run would save it happily and then fail to resume hours later.
    with pytest.raises(TypeError, match=r"step_00000002.pth: .*\['best_miou'\] is a numpy.float64"):
        ckpt.save_step(tmp_path, 2, {"step": 2, "best_miou": np.float64(40.0)})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- the scripts
def test_input_errors_mid_run_become_one_error_line_and_others_keep_their_traceback(capsys):
    from core.cli import exit_on_input_error
    with pytest.raises(SystemExit) as stopped, exit_on_input_error():
        raise ckpt.UnsafeCheckpoint("runs/x/00_teacher/weights.pth: refused to load")
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: runs/x/00_teacher/weights.pth: refused to load\n"
    with pytest.raises(KeyError), exit_on_input_error():  # a bug, not bad input: not hidden
        raise KeyError("model")


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
