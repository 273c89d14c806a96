"""Issue 8's promise for non-finite losses: caught at their exact step, the run stops naming the step,
the stage and the last good checkpoint, or (runtime.nonfinite=skip) skips and counts the steps."""
import json

import pytest

from tests.helpers import assert_same_weights, final_weights, run_script, write_config

pytestmark = pytest.mark.slow


# lr = 1e30 on the tiny teacher: step 0 starts from finite weights, so its loss is finite and its
# update throws the weights out of range; from step 1 on every loss is non-finite. Deterministic.
DIVERGE = ["optim.lr=1e30", "stages.student=null", "stages.query1=null"]


@pytest.mark.parametrize("every, where", [
    # a checkpoint (and so a check) after every step: the one written after step 0 is named
    ("1", "last good checkpoint: {run}/00_teacher/checkpoints/step_00000001.pth"),
    # checks every 4 steps: step 1 is caught at the step-4 check, before the step-4 checkpoint
    ("4", "no checkpoint saved yet"),
])
def test_nonfinite_loss_stops_with_step_stage_and_checkpoint(al_run, tmp_path, every, where):
    cfg = write_config(tmp_path, "nan", tmp_path / "run", al_run["data"])
    result = run_script("train_al.py", cfg, *DIVERGE, f"runtime.checkpoint_every={every}",
                        f"runtime.log_every={every}")
    assert result.returncode != 0
    where = where.format(run=tmp_path / "run")
    assert f"non-finite loss at step 1 of stage 'teacher'; {where}" in result.stderr, result.stderr[-2000:]
    saved = [p.name for p in (tmp_path / "run" / "00_teacher" / "checkpoints").glob("step_*.pth")]
    assert saved == (["step_00000001.pth"] if every == "1" else [])  # none after the bad step


def _parameters(state: dict) -> dict:
    """Trainable tensors only: a skipped step still ran its forward pass, which moves BatchNorm's
    running statistics."""
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_nonfinite_loss_can_be_skipped_and_counted(al_run, tmp_path):
    cfg = write_config(tmp_path, "nan", tmp_path / "run", al_run["data"])
    result = run_script("train_al.py", cfg, *DIVERGE, "runtime.nonfinite=skip")
    assert result.returncode == 0, result.stderr[-2000:]
    train = json.loads((tmp_path / "run" / "00_teacher" / "metrics.json").read_text())["train"]
    assert train["skipped_steps"] == 5  # steps 1..5 of 6
    assert [line.split("step ")[1].split(":")[0] for line in result.stdout.splitlines()
            if "non-finite loss, step skipped" in line] == ["1", "2", "3", "4", "5"]
    # Skipped steps left the weights as step 0 made them: the same as a run that stops after step 0
    # (batches and the step-0 learning rate do not depend on the number of steps).
    one = write_config(tmp_path, "one_step", tmp_path / "one_step", al_run["data"])
    result = run_script("train_al.py", one, *DIVERGE, "stages.teacher.epochs=1", "stages.teacher.iters_per_epoch=1")
    assert result.returncode == 0, result.stderr[-2000:]
    skipped, one_step = _parameters(final_weights(tmp_path / "run")), _parameters(final_weights(tmp_path / "one_step"))
    assert_same_weights(skipped, one_step)
