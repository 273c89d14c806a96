"""Issue 8's promises: killed anywhere (a real SIGKILL) -> same result after a restart; 2 DDP ranks
agree with each other, catch a rank that drifted, select what one process selects and resume like
it; bad input fails early and cleanly; non-finite losses are caught at their exact step."""
import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from datasets import build_source
from datasets.synthetic import generate_synthetic
from tests.helpers import (DDP_STAGES, REPO, assert_same_weights, final_weights, leftover_temporaries,
                                    pool_cells, query_alone_from, run_script, write_config, write_ssl_config)

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


_DIE_WHILE_GENERATING = """
import os, signal, sys
from datasets import synthetic
real, calls = synthetic.render_sample, []
def dies_on_third(*args):
    calls.append(args)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
synthetic.render_sample = dies_on_third
synthetic.generate_synthetic(sys.argv[1], num_train=4, num_val=2, num_test=1, height=48, width=64, seed=3)
"""


def test_synthetic_generation_killed_midway_leaves_no_partial_set(tmp_path):
    # A real SIGKILL: no except/finally block runs, whatever the generator cleans up on errors.
    killed = subprocess.run([sys.executable, "-c", _DIE_WHILE_GENERATING, str(tmp_path / "syn")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "syn").exists()
    root = generate_synthetic(tmp_path / "syn", num_train=4, num_val=2, num_test=1, height=48, width=64, seed=3)
    assert [len(build_source("synthetic", root, split)) for split in ("train", "val", "test")] == [4, 2, 1]


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
# and tests/conftest.py: tests/test_multinode.py compares a two-node run with the same run.


def _stages(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["stages"]


def test_two_gloo_ranks_end_every_stage_with_identical_weights(ddp_run):
    run = ddp_run["run"]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    for stage in ("00_teacher", "01_query1"):
        metrics = json.loads((run / stage / "metrics.json").read_text())
        for key in ("weights_sha256_per_rank", "pool_sha256_per_rank"):
            digests = metrics[key]
            assert len(digests) == 2 and digests[0] == digests[1], (stage, key)


def test_a_rank_whose_weights_drifted_stops_the_run(al_run, tmp_path):
    # A 2-rank teacher with one weight of rank 1 nudged (core/faults.py) before the ranks compare.
    cfg = write_config(tmp_path, "ddp", tmp_path / "run", al_run["data"], stages=DDP_STAGES)
    result = run_script("train_al.py", cfg, "stages.query1=null", "stages.teacher.epochs=1", nproc=2,
                        env={"S4AL_PERTURB_RANK": "1"})
    assert result.returncode != 0
    assert "stage 'teacher': ranks ended with different weights" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "00_teacher" / "weights.pth").exists()


def test_one_process_selects_the_same_cells_from_the_same_teacher(ddp_run, tmp_path):
    ours, _ = query_alone_from(ddp_run, tmp_path)
    assert (pool_cells(ours / "pool.npz") != pool_cells(tmp_path / "one" / "00_teacher" / "pool.npz")).any()
    # ... and evaluates the teacher to the mIoU the two ranks recorded together.
    from core.config import load_config
    from engine.data import source
    from core.distributed import DistContext
    from engine.evaluation import evaluate
    from models.build import make_model
    cfg = load_config(str(ddp_run["config"]))
    src = source(cfg, "val")
    model = make_model(cfg.model, src.num_classes, rep_head=True, noise=False, pretrained="none")
    model.load_state_dict(torch.load(ddp_run["run"] / "00_teacher" / "weights.pth", weights_only=True)["model"])
    single = evaluate(model, src, cfg, DistContext(), amp="none")
    assert single["miou"] == pytest.approx(_stages(ddp_run["run"])[0]["miou"], abs=1e-9)


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
    assert [s["miou"] for s in _stages(ours)] == [s["miou"] for s in _stages(theirs)]
    assert [s["per_class_iou"] for s in _stages(ours)] == [s["per_class_iou"] for s in _stages(theirs)]
    for stage in ("00_teacher", "01_query1"):
        assert (pool_cells(ours / stage / "pool.npz") == pool_cells(theirs / stage / "pool.npz")).all()
    assert_same_weights(final_weights(ours), final_weights(theirs))
    digests = json.loads((ours / "01_query1" / "metrics.json").read_text())["weights_sha256_per_rank"]
    assert digests == json.loads((theirs / "01_query1" / "metrics.json").read_text())["weights_sha256_per_rank"]


# --------------------------------------------------------------------------- bad input
def _bad_data(tmp_path, al_run, damage):
    data = tmp_path / "data"
    shutil.copytree(al_run["data"], data)
    damage(data)
    return data


def _corrupt_image(d):
    (d / "train" / "synth_train_0002.png").write_bytes(b"not a png at all")


def _shrink_label(d):
    import cv2
    p = d / "trainannot" / "synth_train_0003.png"
    cv2.imwrite(str(p), cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[:40])


def _bad_label_value(d):
    import cv2
    p = d / "trainannot" / "synth_train_0004.png"
    lab = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 42
    cv2.imwrite(str(p), lab)


def _missing_split_entry(d):
    (d / "train" / "synth_train_0005.png").unlink()


BAD_INPUTS = [
    # (name, overrides, data damage, fragment of the one-line error)
    ("unknown key", ["model.widht=3"], None, "unknown key model.widht"),
    ("wrong type", ["optim.lr=fast"], None, "optim.lr (from command line): expected float"),
    ("negative budget", ["query.budget_pct=-2"], None, "query.budget_pct"),
    ("budget over pool", ["query.selection=global", "query.budget_pct=80"], None, "more than the whole pool"),
    ("regions over image", ["query.regions_per_image=13"], None, "exceeds the 3x4 regions"),
    ("region larger than image", ["query.region_size=[64,64]"], None, "larger than the images"),
    ("missing data root", ["data.dataset=camvid", "data.root=/nonexistent/camvid"], None, "/nonexistent/camvid"),
    ("missing split", ["data.eval_split=/nonexistent/val.txt"], None, "/nonexistent/val.txt"),
    ("split entry without file", [], _missing_split_entry, "synth_train_0005"),
    ("corrupt image", [], _corrupt_image, "synth_train_0002.png"),
    ("image/label size mismatch", [], _shrink_label, "synth_train_0003"),
    ("label out of range", [], _bad_label_value, "synth_train_0004.png"),
    ("missing weights file", ["model.pretrained=/nonexistent/w.pth", "stage_defaults.init=pretrained"], None,
     "/nonexistent/w.pth"),
    ("init_from unknown", ["init_from=table1/camvid/row42"], None, "table1/camvid/row42"),
    ("zero epochs", ["stages.teacher.epochs=0"], None, "stages.teacher.epochs"),
    ("unknown labeled id", ["data.labeled_split=LABELS"], None, "nope"),
    ("output dir is a file", ["output_dir=FILE/run"], None, "is a file, not a folder"),
]


@pytest.mark.parametrize("name, overrides, damage, fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_early_with_one_line_and_no_run_dir(al_run, tmp_path, name, overrides, damage, fragment):
    data = _bad_data(tmp_path, al_run, damage) if damage else al_run["data"]
    (tmp_path / "labels.txt").write_text("train/nope.png trainannot/nope.png\n")
    (tmp_path / "a_file").write_text("")
    overrides = [o.replace("LABELS", str(tmp_path / "labels.txt")).replace("FILE", str(tmp_path / "a_file"))
                 for o in overrides]
    if name == "unknown labeled id":  # a list whose entry exists on disk but is not in the pool
        shutil.copy(data / "val" / "synth_val_0000.png", tmp_path / "x.png")
        (tmp_path / "labels.txt").write_text(f"val/synth_val_0000.png valannot/synth_val_0000.png\n")
        fragment = "synth_val_0000"
    cfg = write_config(tmp_path, "bad", tmp_path / "run", data)
    result = run_script("train_al.py", cfg, *overrides)
    assert result.returncode == 2, (result.stdout[-1000:], result.stderr[-2000:])
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and fragment in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_weights_for_another_architecture_are_refused(al_run, tmp_path):
    from models.backbones import build_backbone
    wrong = tmp_path / "resnet50.pth"
    torch.save(build_backbone("resnet50", 16).state_dict(), wrong)
    cfg = write_config(tmp_path, "bad", tmp_path / "run", al_run["data"])
    result = run_script("train_al.py", cfg, f"model.pretrained={wrong}", "stage_defaults.init=pretrained")
    assert result.returncode == 2 and "do not fit the mobilenet_v2 backbone" in result.stderr
    assert not (tmp_path / "run").exists()


def test_run_dir_of_another_config_is_refused_unless_overwrite(al_run, tmp_path):
    cfg = write_config(tmp_path, "tiny_al", tmp_path / "run", al_run["data"])
    shutil.copytree(al_run["run"], tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    result = run_script("train_al.py", cfg, "optim.lr=0.5")
    assert result.returncode == 2 and "holds a run with a different config" in result.stderr
    assert "optim.lr: 0.01 -> 0.5" in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()  # nothing of the old run was touched
    assert run_script("train_al.py", cfg, "optim.lr=0.5", "--dry-run").returncode == 2


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
