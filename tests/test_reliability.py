"""Issue 8's promises: killed anywhere -> same result after a restart; DDP ranks agree with each
other and with one process; bad input fails early and cleanly; non-finite losses are caught."""
import json
import shutil
import signal
import sys

import numpy as np
import pytest
import torch

from tests.pipeline_helpers import (assert_same_weights, final_weights, leftover_temporaries, pool_cells,
                                    run_script, write_config)

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


def test_killed_ssl_run_resumes_to_the_same_result(al_run, tmp_path):
    ids = sorted(p.stem for p in (al_run["data"] / "train").glob("*.png"))[:4]
    split = tmp_path / "labeled.txt"
    split.write_text("".join(f"train/{i}.png trainannot/{i}.png\n" for i in ids))
    stages = ("stages:\n  teacher: {kind: supervised, batch_labeled: 2}\n"
              "  round1: {kind: self_train, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher}\n")
    runs = {}
    for name, die_at in [("straight", None), ("killed", "train_step:9")]:
        cfg = write_config(tmp_path, name, tmp_path / name, al_run["data"], stages=stages)
        cfg.write_text(cfg.read_text().replace("  train_split: train\n",
                                               f"  train_split: train\n  labeled_split: {split}\n"))
        result = run_script("train_ssl.py", cfg, die_at=die_at)
        if die_at:
            assert result.returncode == -signal.SIGKILL
            result = run_script("train_ssl.py", cfg)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = final_weights(tmp_path / name)
    assert_same_weights(runs["straight"], runs["killed"])


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


def test_two_gloo_ranks_agree_with_each_other_and_with_one_process(al_run, tmp_path):
    stages = ("stages:\n  teacher: {kind: supervised, batch_labeled: 2}\n"
              "  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, epochs: 1}\n")
    ddp_cfg = write_config(tmp_path, "ddp", tmp_path / "ddp", al_run["data"], stages=stages)
    result = run_script("train_al.py", ddp_cfg, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    for stage in ("00_teacher", "01_query1"):
        digests = json.loads((tmp_path / "ddp" / stage / "metrics.json").read_text())["weights_sha256_per_rank"]
        assert len(digests) == 2 and digests[0] == digests[1]
    # One process, starting from the 2-rank teacher (init_from reuses it), queries the same regions.
    one_cfg = write_config(tmp_path, "one", tmp_path / "one", al_run["data"], stages=stages,
                           extra=f"init_from: {ddp_cfg}\n")
    result = run_script("train_al.py", one_cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "] reused from" in result.stdout
    assert (pool_cells(tmp_path / "one" / "01_query1" / "pool.npz")
            == pool_cells(tmp_path / "ddp" / "01_query1" / "pool.npz")).all()
    # ... and evaluates the teacher to the same mIoU as the two ranks did together.
    from engine.config import load_config
    from engine.data import source
    from engine.distributed import DistContext
    from engine.evaluate import evaluate
    from engine.optim import make_model
    cfg = load_config(str(ddp_cfg))
    src = source(cfg, "val")
    model = make_model(cfg, src.num_classes, rep_head=True, noise=False, pretrained="none")
    model.load_state_dict(torch.load(tmp_path / "ddp" / "00_teacher" / "weights.pth", weights_only=False)["model"])
    single = evaluate(model, src, cfg, DistContext(), amp="none")
    assert single["miou"] == pytest.approx(summary["stages"][0]["miou"], abs=1e-9)


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
    ("output dir is a file", ["output_dir=FILE/run"], None, "is a file, not a directory"),
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


def test_nonfinite_loss_stops_with_step_stage_and_checkpoint(al_run, tmp_path):
    cfg = write_config(tmp_path, "nan", tmp_path / "run", al_run["data"])
    result = run_script("train_al.py", cfg, "optim.lr=1e30")
    assert result.returncode != 0
    assert "non-finite loss at step" in result.stderr and "stage 'teacher'" in result.stderr
    assert "last good checkpoint: " in result.stderr or "no checkpoint saved yet" in result.stderr


def test_nonfinite_loss_can_be_skipped_and_counted(al_run, tmp_path):
    cfg = write_config(tmp_path, "nan", tmp_path / "run", al_run["data"])
    result = run_script("train_al.py", cfg, "optim.lr=1e30", "runtime.nonfinite=skip",
                        "stages.student=null", "stages.query1=null")
    assert result.returncode == 0, result.stderr[-2000:]
    train = json.loads((tmp_path / "run" / "00_teacher" / "metrics.json").read_text())["train"]
    assert 1 <= train["skipped_steps"] <= 6
