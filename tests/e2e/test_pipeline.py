"""train_al.py / train_ssl.py end to end on a tiny synthetic set: outputs, query accounting,
finished stages never recomputed, init_from reuse."""
from __future__ import annotations

import json

import numpy as np
import pytest

from query.pool import LabelPool
from tests.helpers import AL_STAGES, leftover_temporaries, run_script, write_config

pytestmark = pytest.mark.slow


def test_summary_reports_every_stage_in_percent(al_run):
    summary = json.loads((al_run["run"] / "summary.json").read_text())
    assert summary["finished"] is True and summary["config"] == "tiny_al" and summary["world_size"] == 1
    assert [s["name"] for s in summary["stages"]] == ["teacher", "student", "query1"]
    assert [s["kind"] for s in summary["stages"]] == ["supervised", "self_train", "query"]
    for stage, folder in zip(summary["stages"], ("00_teacher", "01_student", "02_query1")):
        metrics = json.loads((al_run["run"] / folder / "metrics.json").read_text())
        # The stage's own evaluation (recomputed by hand in tests/e2e/test_stage_contracts.py), whose
        # mIoU is the mean over the classes that occur.
        assert stage["miou"] == metrics["eval"]["miou"] and stage["per_class_iou"] == metrics["eval"]["per_class_iou"]
        assert set(stage["per_class_iou"]) == set(summary["classes"])
        present = [v for v in stage["per_class_iou"].values() if v is not None]
        assert stage["miou"] == pytest.approx(sum(present) / len(present), abs=1e-9)
        # Wall time = training + the pseudo-label pass before it (+ the evaluation), in seconds.
        pseudo = al_run["run"] / folder / "pseudo_done.npz"
        pseudo_s = float(np.load(pseudo)["seconds"]) if pseudo.is_file() else 0.0
        assert (folder == "00_teacher") != (pseudo_s > 0)
        assert stage["wall_time_s"] >= metrics["train"]["train_time_s"] + pseudo_s
    # ... and all stages together took less than the whole run, timed from outside.
    assert sum(s["wall_time_s"] for s in summary["stages"]) < al_run["seconds"]
    assert "mIoU" in al_run["stdout"] and "labeled %" in al_run["stdout"]  # the printed results table


def test_query_reveals_the_top_entropy_cells_and_accounts_pixels_exactly(al_run):
    run = al_run["run"]
    before = LabelPool.load(run / "01_student" / "pool.npz")
    after = LabelPool.load(run / "02_query1" / "pool.npz")
    after.check_grows_from(before)
    new = after.cells & ~before.cells
    assert not (new & before.cells).any()
    # 48x64 images with 16x16 regions: 3x4 cells of 256 px; 2 regions per image that was not
    # fully labeled (12 images, 3 labeled at 25%).
    unlabeled = [i for i in range(len(before)) if not before.cells[i].all()]
    assert len(before.ids) == 12 and len(unlabeled) == 9
    assert new.sum() == 2 * len(unlabeled) and all(new[i].sum() == 2 for i in unlabeled)
    expected_pct = 100.0 * (3 * 48 * 64 + 2 * len(unlabeled) * 256) / (12 * 48 * 64)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"][2]["labeled_pixel_pct"] == pytest.approx(expected_pct, abs=1e-9)
    assert summary["stages"][0]["labeled_pixel_pct"] == pytest.approx(25.0, abs=1e-9)
    # The chosen cells are the two highest-scoring unlabeled ones of each image (recomputed here
    # from the saved scores, independently of query/scoring.py); void pixels play no part, since
    # the labels of unlabeled images are unknown to a query.
    scores = np.load(run / "02_query1" / "pseudo_done.npz")["scores"]
    for i in unlabeled:
        eligible = ~before.cells[i]
        ranked = sorted(zip(-scores[i][eligible], np.flatnonzero(eligible.ravel())))
        top = {int(idx) for _, idx in ranked[:2]}
        assert set(np.flatnonzero(new[i].ravel()).tolist()) == top


def test_each_stage_records_its_throughput(al_run):
    # student: 1 epoch x 3 steps of 1 labeled + 2 pseudo-labeled images (tests/helpers.py)
    expected = {"00_teacher": (6, 2), "01_student": (3, 3), "02_query1": (6, 3)}
    for stage, (steps, batch) in expected.items():
        got = json.loads((al_run["run"] / stage / "metrics.json").read_text())["train"]["throughput"]
        assert got["steps"] == steps
        assert got["images_per_s"] == pytest.approx(steps * batch / got["seconds"], rel=1e-6)
        assert 0.0 <= got["data_wait_fraction"] < 1.0  # workers: 0, so loading time is waiting time
        assert got["data_wait_fraction"] > 0.0


def test_outputs_a_user_looks_at_exist(al_run):
    run = al_run["run"]
    assert len(list((run / "02_query1" / "query_vis").glob("*.png"))) == 2
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and "resolved config" in (run / "log.txt").read_text()
    pseudo = list((run / "01_student" / "pseudo").glob("*.png"))
    assert len(pseudo) == 9  # every image that is not fully labeled
    assert not leftover_temporaries(run)
    assert not (run / "00_teacher" / "checkpoints").exists()  # step checkpoints go once a stage is done


def test_running_again_recomputes_nothing(al_run):
    weights = {p: p.stat().st_mtime_ns for p in al_run["run"].rglob("weights.pth")}
    result = run_script("train_al.py", al_run["config"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("already finished") == 3
    assert {p: p.stat().st_mtime_ns for p in al_run["run"].rglob("weights.pth")} == weights


def test_init_from_reuses_identical_leading_stages(al_run):
    base = al_run["base"]
    longer = AL_STAGES.replace("query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, noise: true, "
                               "init: teacher}", "query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, "
                               "noise: true, init: teacher, epochs: 1}")
    cfg = write_config(base, "tiny_al_b", base / "run_b", al_run["data"], stages=longer,
                       extra=f"init_from: {al_run['config']}\n")
    result = run_script("train_al.py", cfg)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("] reused from ") == 2  # teacher and student; query1 differs (epochs)
    for stage in ("00_teacher", "01_student"):
        assert (base / "run_b" / stage / "weights.pth").read_bytes() == \
            (al_run["run"] / stage / "weights.pth").read_bytes()
    # query1 was computed here, starting from the reused student: the same pseudo labels and the
    # same selected cells as the first run's query1 (whose training then ran twice as long).
    ours, theirs = base / "run_b" / "02_query1", al_run["run"] / "02_query1"
    names = sorted(p.name for p in (theirs / "pseudo").glob("*.png"))
    assert len(names) == 9 and sorted(p.name for p in (ours / "pseudo").glob("*.png")) == names
    for name in names:
        assert (ours / "pseudo" / name).read_bytes() == (theirs / "pseudo" / name).read_bytes(), name
    assert (LabelPool.load(ours / "pool.npz").cells == LabelPool.load(theirs / "pool.npz").cells).all()
    assert json.loads((ours / "metrics.json").read_text())["train"]["throughput"]["steps"] == 3  # 1 epoch


def test_a_random_query_twin_reuses_the_stages_before_the_query(al_run):
    # Same stages, other query strategy: teacher and student did not depend on it, query1 does.
    base = al_run["base"]
    cfg = write_config(base, "tiny_al_random", base / "run_random", al_run["data"],
                       extra=f"init_from: {al_run['config']}\n")
    cfg.write_text(cfg.read_text().replace("regions_per_image: 2,", "regions_per_image: 2, strategy: random,"))
    result = run_script("train_al.py", cfg)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("] reused from ") == 2
    entropy = LabelPool.load(al_run["run"] / "02_query1" / "pool.npz")
    random = LabelPool.load(base / "run_random" / "02_query1" / "pool.npz")
    assert random.labeled_pixel_fraction() == entropy.labeled_pixel_fraction()  # same budget...
    assert not np.array_equal(random.cells, entropy.cells)  # ...other regions


def test_a_query_run_reuses_the_stages_of_a_run_without_queries(al_run):
    # A run without a query stage keeps whole-image pools; a query run that reuses its teacher
    # (Table 1 row 5 from row 4) must carry them over to its region grid.
    base = al_run["base"]
    teacher_only = "\nstages:\n  teacher: {kind: supervised, batch_labeled: 2}\n"
    sup = write_config(base, "tiny_sup", base / "run_sup", al_run["data"], stages=teacher_only)
    assert run_script("train_al.py", sup).returncode == 0
    query = teacher_only + "  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, init: teacher, epochs: 1}\n"
    cfg = write_config(base, "tiny_sup_query", base / "run_sq", al_run["data"], stages=query,
                       extra=f"init_from: {sup}\n")
    result = run_script("train_al.py", cfg)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("] reused from ") == 1
    teacher_pool = LabelPool.load(base / "run_sup" / "00_teacher" / "pool.npz")
    query_pool = LabelPool.load(base / "run_sq" / "01_query1" / "pool.npz")
    assert teacher_pool.grid.shape == (1, 1) and query_pool.grid.shape == (3, 4)
    labeled = teacher_pool.cells[:, 0, 0]
    assert query_pool.cells[labeled].all()  # the reused labeled images stay fully labeled
    assert query_pool.cells[~labeled].sum(axis=(1, 2)).tolist() == [2] * int((~labeled).sum())


def test_ssl_run_uses_the_labeled_split_and_never_queries(ssl_run):
    run = ssl_run["run"]
    summary = json.loads((run / "summary.json").read_text())
    assert [s["kind"] for s in summary["stages"]] == ["supervised", "self_train"]
    pool = LabelPool.load(run / "00_teacher" / "pool.npz")
    assert sorted(pool.ids[i] for i in pool.fully_labeled()) == ssl_run["labeled"]
    assert summary["stages"][0]["labeled_pixel_pct"] == pytest.approx(100 * 4 / 12)
    assert len(list((run / "01_round1" / "pseudo").glob("*.png"))) == 8


def test_training_learns_something(al_run, tmp_path):
    """A short supervised run on the tiny set ends clearly above the untrained model's mIoU."""
    import torch

    from core.config import load_config
    from engine.data import source
    from core.distributed import DistContext
    from engine.evaluation import evaluate
    from models.build import make_model
    cfg_file = write_config(tmp_path, "learn", tmp_path / "run", al_run["data"])
    overrides = ["stages.student=null", "stages.query1=null", "stages.teacher.epochs=12",
                 "stages.teacher.batch_labeled=4", "stages.teacher.reco=false", "optim.lr=0.05",
                 "query.initial_fraction=1.0"]
    result = run_script("train_al.py", cfg_file, *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    cfg = load_config(str(cfg_file), overrides)
    src = source(cfg, "val")
    torch.manual_seed(0)
    untrained = evaluate(make_model(cfg.model, src.num_classes, rep_head=False, noise=False, pretrained="none"),
                         src, cfg, DistContext(), amp="none")["miou"]
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"][0]["miou"]
    assert trained > untrained + 5.0, (untrained, trained)


def test_init_from_compares_with_the_source_runs_saved_config(al_run, tmp_path):
    """Regression (issue 22): `init_from=X query.oracle=human` once re-applied the command line to
    X's config, found them equal and reused X's ground-truth query1 in a run recorded as human.
    The saved config.yaml of X says oracle ground_truth: query1 must be computed here (and wait
    for a person), the teacher and student (which no query setting touches) reused."""
    from core.cli import EXIT_AWAITING_LABELS
    args = (f"init_from={al_run['config']}", "query.oracle=human", f"output_dir={tmp_path / 'h'}")
    dry = run_script("train_al.py", al_run["config"], *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    described = {line.split(":")[0]: line for line in dry.stdout.splitlines() if line.startswith("stage ")}
    assert "reused)" in described["stage 0 teacher"] and "reused)" in described["stage 1 student"]
    assert "reused" not in described["stage 2 query1"]
    result = run_script("train_al.py", al_run["config"], *args)
    assert result.returncode == EXIT_AWAITING_LABELS, result.stderr[-2000:]
    assert result.stdout.count("] reused from ") == 2 and "[query1] reused" not in result.stdout
    assert (tmp_path / "h" / "02_query1" / "annotate" / "manifest.json").is_file()
    assert not (tmp_path / "h" / "02_query1" / "metrics.json").exists()
    # A stage the source run does not have is never announced as reusable.
    more = run_script("train_al.py", al_run["config"], f"init_from={al_run['config']}", f"output_dir={tmp_path / 'g'}",
                      "stages.query2={kind: query, batch_labeled: 1, batch_unlabeled: 2, init: teacher}", "--dry-run")
    assert more.returncode == 0, more.stderr[-2000:]
    query2 = next(line for line in more.stdout.splitlines() if line.startswith("stage 3 query2"))
    assert "reused" not in query2
    assert "(same as in" in next(line for line in more.stdout.splitlines() if line.startswith("stage 2 query1"))


def test_world_size_is_recorded_per_stage(al_run):
    stages = json.loads((al_run["run"] / "summary.json").read_text())["stages"]
    assert [s["world_size"] for s in stages] == [1, 1, 1]
