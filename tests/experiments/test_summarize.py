"""experiments/summarize.py, the run report: ours beside the paper (missing and unfinished runs,
seeds, Table S2, per-class tables), the 95% metric, Sec. 5's gains, what the queries pick, Fig. 3
and the labelled curves, and the script (an unreadable run listed and skipped)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments.summarize import main as summarize_main, summarize
from tests.helpers import CAMVID_CLASS_NAMES, REPO, run_python, summary_stage, write_summary


# ---------------------------------------------------------------- fabricated runs
def _row(report, first_cell):
    """The cells of the Markdown row whose first cell is first_cell."""
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row '{first_cell}' in the report")


@pytest.fixture
def fabricated_runs(tmp_path):
    runs = tmp_path / "runs"
    row6_iou = {c: 40.0 + i for i, c in enumerate(CAMVID_CLASS_NAMES)}
    write_summary(runs, "table1/camvid/row6", "table1/camvid/row6", [
        summary_stage("teacher", "supervised", 10.0, 55.0, wall=1000.0),
        summary_stage("self_train", "self_train", 10.0, 58.0, wall=2000.0),
        summary_stage("query1", "query", 12.1, 63.3, epochs=150, wall=3600.0, per_class=row6_iou)])
    write_summary(runs, "table1/camvid/row5", "table1/camvid/row5",
                   [summary_stage("teacher", "supervised", 10.0, 57.0)], finished=False, num_stages=3)
    return runs, row6_iou


def test_report_shows_ours_and_difference_and_marks_missing_and_unfinished(fabricated_runs):
    runs, row6_iou = fabricated_runs
    report = summarize(runs)
    row6 = _row(report, "table1/camvid/row6")
    assert row6[1:6] == ["62.65", "63.30", f"{63.3 - 62.65:+.2f}", "12.10 / 12.10", "150 / 150"]
    assert row6[6] == "1h 50m"  # 1000 + 2000 + 3600 s
    assert row6[7] == "NVIDIA H100 x4"
    assert _row(report, "table1/camvid/row5")[2] == "unfinished (stage 1/3)"
    assert _row(report, "table1/camvid/row1")[2] == "missing"
    assert _row(report, "tableS1/r50_100")[4] == "missing"
    # Per-class table S3: our values matched to the paper's columns ("Column Pole" = "pole").
    paper_s4al_plus = [91.08, 81.99, 16.62, 93.88, 79.21, 75.65, 37.39, 34.27, 80.31, 51.20, 47.56]
    ours = _row(report, "ours: table1/camvid/row6")
    assert ours[1:] == [f"{v:.2f}" for v in row6_iou.values()] + ["63.30"]
    diff = _row(report, "difference")
    assert diff[1:-1] == [f"{o - p:+.2f}" for o, p in zip(row6_iou.values(), paper_s4al_plus)]
    assert _row(report, "ours: supervised/camvid_full — missing")[1] == "—"
    # Only numbers from the summaries: the unfinished run's 57.0 is never shown as a result.
    assert "57.00" not in report


def test_unfinished_without_stage_count_and_seeds_listed(tmp_path):
    runs = tmp_path / "runs"
    write_summary(runs, "tableS1/r50_100", "tableS1/r50_100",
                   [summary_stage("teacher", "supervised", 3.4, 57.0)], finished=False)
    write_summary(runs, "tableS1/r50_100_seed1", "configs/tableS1/r50_100.yaml", [
        summary_stage("teacher", "supervised", 3.4, 57.5), summary_stage("round1", "self_train", 3.4, 60.1),
        summary_stage("round2", "self_train", 3.4, 61.2, epochs=240)])
    report = summarize(runs)
    assert _row(report, "tableS1/r50_100")[4] == "unfinished (stage 1/?)"
    seed1 = _row(report, f"tableS1/r50_100 [{runs / 'tableS1/r50_100_seed1'}]")
    assert seed1[4:6] == ["61.20", f"{61.2 - (59.99 + 61.00) / 2:+.2f}"]
    # Table S2: the teacher stage of each run beside SupOnly+Rep (58.29), the unfinished run's
    # teacher stage included (that stage did finish); no SupOnly run yet; S4AL+ = the final stage.
    s2 = [line for line in report.split("## Table S2")[1].split("\n## ")[0].splitlines() if "r50_100" in line]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in s2]
    assert cells[0][3:] == ["56.25", "missing", "58.29", "57.00", f"{57.0 - 58.29:+.2f}", "61.00",
                            "unfinished (stage 1/?)"]
    assert cells[1][3:] == ["56.25", "missing", "58.29", "57.50", f"{57.5 - 58.29:+.2f}", "61.00", "61.20"]
    # ... and the paper's table in full: SupOnly, SupOnly+Rep, ST++, MT, CCT, CPS, AEL, U2PL, S4AL+.
    r101d_186 = _row(report, "1/16")
    assert r101d_186[1:] == ["186", "R101D", "66.10", "67.16", "—", "69.03", "69.32", "69.72", "74.45", "—", "71.89"]


def test_per_class_name_mismatch_is_an_error(tmp_path):
    runs = tmp_path / "runs"
    iou = {c: 50.0 for c in CAMVID_CLASS_NAMES if c != "sign"}
    write_summary(runs, "table1/camvid/row6", "table1/camvid/row6",
                   [summary_stage("query1", "query", 12.1, 50.0, per_class=iou)])
    with pytest.raises(ValueError, match="paper column 'Sign'"):
        summarize(runs)


# ---------------------------------------------------------------- the 95% metric
def test_al_metric_in_report(tmp_path, paper):
    runs = tmp_path / "runs"
    write_summary(runs, "supervised/camvid_full", "supervised/camvid_full",
                   [summary_stage("full", "supervised", 100.0, 64.0)])
    for name, mious in (("table1/camvid/row6", [55.0, 58.0, 61.0]),
                        ("table1/camvid/row6_random", [55.0, 57.0, 59.0])):
        write_summary(runs, name, name, [
            summary_stage(f"s{i}", k, p, m) for i, (k, p, m) in enumerate(
                zip(["supervised", "self_train", "query"], [10.0, 10.0, 12.1], mious))])
    cityscapes_iou = {spec["names"][0]: 50.0 for spec in paper["tableS4"]["classes"]}
    write_summary(runs, "table1/cityscapes/row9", "table1/cityscapes/row9",
                   [summary_stage("teacher", "supervised", 10.0, 50.0, per_class=cityscapes_iou)])
    section = summarize(runs).split("## Active-learning metric")[1].split("\n## ")[0]
    lines = {line.split("|")[4].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in section.splitlines() if line.startswith("| camvid") or
             line.startswith("| cityscapes")}
    # Paper's claim, and the same rule on the paper's own Table 1: CamVid row 3 (60.50 at 10%)
    # already passes 0.95 * 63.55 = 60.37; Cityscapes first passes 0.95 * 65.30 at 15.1%.
    assert lines["table1/camvid/row6"][1:3] == ["12.1%", "10%"]
    assert lines["table1/cityscapes/row9"][1:3] == ["15%", "15.1%"]
    assert lines["table1/camvid/row6"][5:] == ["60.80", "12.1%"]
    assert lines["table1/camvid/row6_random"][6] == "not reached"
    assert lines["table1/cityscapes/row9"][4:] == ["no supervised run", "—", "no supervised run"]


def test_section5_gains_beside_table1_and_ours(tmp_path):
    runs = tmp_path / "runs"
    write_summary(runs, "table1/camvid/row1", "table1/camvid/row1",
                  [summary_stage("teacher", "supervised", 10.1, 55.0)])
    write_summary(runs, "table1/camvid/row2", "table1/camvid/row2",
                  [summary_stage("teacher", "supervised", 10.1, 56.5)])
    section = summarize(runs).split("## Sec. 5's stated gains")[1].split("\n## ")[0]
    rows = {(c[0], c[1], c[3]): c for c in ([x.strip() for x in line.strip("|").split("|")]
                                          for line in section.splitlines() if line.startswith("| "))}
    reco = rows[("ReCo", "camvid", "`table1/camvid/row1` -> `table1/camvid/row2`")]
    assert reco[2:] == ["+2.0", reco[3], f"{60.11 - 58.42:+.2f}", f"{56.5 - 55.0:+.2f}", "55.00 -> 56.50"]
    st = rows[("self-training", "camvid", "`table1/camvid/row2` -> `table1/camvid/row4`")]
    assert st[2] == "+1.8" and st[4] == f"{60.92 - 60.11:+.2f}" and st[5] == "—" and st[6] == "56.50 -> missing"


def test_report_compares_what_entropy_and_random_queries_reveal(tmp_path):
    from experiments.summarize import summarize
    runs = tmp_path / "runs"
    base = [summary_stage("teacher", "supervised", 10.0, 50.0), summary_stage("student", "self_train", 10.0, 52.0)]
    pool = {"sky": 600, "road": 300, "void": 100}
    entropy = [{"sky": 10, "road": 30, "void": 0}, {"sky": 10, "road": 50, "void": 0}]
    random = [{"sky": 40, "road": 20, "void": 20}, {"sky": 0, "road": 20, "void": 0}]
    for name, cycles in (("table1/camvid/row6", entropy), ("table1/camvid/row6_random", random)):
        queries = [{**summary_stage(f"query{i}", "query", 12.0, 55.0), "queried_class_pixels": c,
                    "pool_class_pixels": pool} for i, c in enumerate(cycles)]
        write_summary(runs, name, name, base + queries)
    report = summarize(runs)
    section = report.split("## What the queries pick")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")][1:]
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("| class")}
    # entropy: 20 sky, 80 road of 100; random: 40 sky, 40 road, 20 void of 100; pool 60/30/10 %.
    assert rows == {"sky": ["20.00", "40.00", "-20.00", "60.00"], "road": ["80.00", "40.00", "+40.00", "30.00"],
                    "void": ["0.00", "20.00", "-20.00", "10.00"]}
    assert "`table1/camvid/row6` vs `table1/camvid/row6_random`" in section


# ---------------------------------------------------------------- the plot
def test_plot_is_written_as_png(fabricated_runs, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image
    runs, _ = fabricated_runs
    out = tmp_path / "plots" / "fig3.png"
    summarize(runs, plot_path=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.width > image.height > 100  # two subplots side by side


def test_summarize_draws_one_labelled_curve_per_run_with_its_random_twin(tmp_path):
    from datasets.decode import read_rgb
    from experiments.run_summaries import Run
    from experiments.summarize import labelled_curves

    def run(name, points):
        stages = [{"name": f"s{i}", "labeled_pixel_pct": x, "miou": y} for i, (x, y) in enumerate(points)]
        return Run(config=name, run_dir=tmp_path / name, finished=True, device="cpu", stages=stages)
    runs = {"my_photos": [run("my_photos", [(10, 30), (15, 36), (20, 41)])],
            "my_photos_random": [run("my_photos_random", [(10, 30), (15, 33), (20, 37)])],
            "alone": [run("alone", [(5, 20), (8, 25)])]}
    section = labelled_curves(runs, tmp_path / "curves")
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == ["alone.png", "my_photos.png"]
    assert "`my_photos`" in section and "`alone`" in section and "my_photos_random`" not in section

    def has_colour(path, rgb):  # matplotlib's first two line colours: blue, then orange
        return bool((np.abs(read_rgb(path).astype(int) - rgb).sum(axis=2) < 30).any())
    blue, orange = (31, 119, 180), (255, 127, 14)
    assert has_colour(tmp_path / "curves" / "my_photos.png", blue) and has_colour(tmp_path / "curves" / "my_photos.png", orange)
    assert has_colour(tmp_path / "curves" / "alone.png", blue) and not has_colour(tmp_path / "curves" / "alone.png", orange)


# ---------------------------------------------------------------- the script
def test_summarize_script_writes_the_report(fabricated_runs, tmp_path):
    runs, _ = fabricated_runs
    out = tmp_path / "report.md"
    result = subprocess.run([sys.executable, "experiments/summarize.py", str(runs), "--out",
                             str(out), "--no-plot"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| table1/camvid/row6 | 62.65 | 63.30 |" in out.read_text()
    assert "| table1/camvid/row6 | 62.65 | 63.30 |" in result.stdout


def test_summarize_main_in_process(fabricated_runs, tmp_path, capsys):
    runs, _ = fabricated_runs
    assert summarize_main([str(runs), "--out", str(tmp_path / "r.md"), "--no-plot"]) == 0
    assert "unfinished (stage 1/3)" in (tmp_path / "r.md").read_text()


@pytest.mark.slow
def test_summarize_lists_and_skips_an_unreadable_run(al_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(al_run["run"], runs / "good", symlinks=True)
    (runs / "bad").mkdir()
    (runs / "bad" / "summary.json").write_text("{not json")
    result = run_python("experiments/summarize.py", str(runs), "--out", str(tmp_path / "r.md"), "--no-plot")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: skipped {runs / 'bad' / 'summary.json'}" in result.stderr
    report = (tmp_path / "r.md").read_text()
    assert "Skipped runs" in report and "tiny_al" in report
