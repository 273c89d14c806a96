"""experiments/: the paper's numbers as data, the run report, the 95% metric, Fig. 3, reproduce."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import reproduce
from experiments.run_summaries import (
    labeled_pct_reaching, load_paper_results, load_runs, paper_config_names, read_summary)
from experiments.summarize import main as summarize_main
from experiments.summarize import summarize
from tests.helpers import REPO

REPO_ROOT = REPO
PAPER_TEXT_DIR = Path("/work/shared/paper")

# Spelled out here, independently of the code, from the project's list of configs.
KNOWN_CONFIGS = (
    {f"table1/camvid/row{i}" for i in range(1, 7)}
    | {f"table1/cityscapes/row{i}" for i in range(1, 10)}
    | {"table1/camvid/row6_random", "table1/cityscapes/row9_random"}
    | {f"tableS1/{n}" for n in ("r50_100", "r50_372", "r50_744", "r101d_186", "r101d_372",
                                "r101d_744", "r101d_1488")}
    | {"equal/camvid_r50", "equal/cityscapes_r50",
       "supervised/camvid_full", "supervised/cityscapes_full"}
    | {"table1/camvid/row5_pct", "table1/camvid/row6_pct"} | {f"table1/cityscapes/row{i}_pct" for i in range(5, 10)}
    | {f"tableS2/suponly_{n}" for n in ("r50_100", "r50_372", "r50_744", "r101d_186", "r101d_372",
                                        "r101d_744", "r101d_1488")})


@pytest.fixture(scope="module")
def paper():
    return load_paper_results()


# ---------------------------------------------------------------- paper_results.yaml

def test_paper_yaml_names_exactly_the_known_configs(paper):
    assert set(paper_config_names(paper)) == KNOWN_CONFIGS


def test_every_named_config_file_exists():
    configs_dir = REPO_ROOT / "configs"
    missing = [n for n in sorted(KNOWN_CONFIGS) if not (configs_dir / f"{n}.yaml").is_file()]
    assert missing == []


def test_paper_yaml_is_internally_consistent(paper):
    assert [len(paper["table1"][d]) for d in ("camvid", "cityscapes")] == [6, 9]
    assert [r["labeled_pct"] for r in paper["table1"]["camvid"]] == [10, 10, 10, 10, 12.1, 12.1]
    assert [r["labeled_pct"] for r in paper["table1"]["cityscapes"]] == \
        [10, 10, 10, 10, 11.3, 12.6, 13.8, 15.1, 15.1]
    assert len(paper["tableS1"]) == 7 and all(len(r["miou_runs"]) == 2 for r in paper["tableS1"])
    assert {r["config"] for r in paper["tableS2"]} == {r["config"] for r in paper["tableS1"]}
    run2 = {r["config"]: r["miou_runs"][1] for r in paper["tableS1"]}  # S2's S4AL+ column repeats Run 2
    assert [r["s4al_plus"] for r in paper["tableS2"]] == [run2[r["config"]] for r in paper["tableS2"]]
    table1 = {r["config"] for rows in paper["table1"].values() for r in rows}
    assert all({c["without"], c["with"]} <= table1 for c in paper["section5_claims"])
    rows = {t: {r["label"].split(" (")[0]: r for r in paper[t]["rows"]} for t in ("tableS3", "tableS4")}
    # The per-class tables repeat Table 1's last rows and give the supervised level.
    assert rows["tableS3"]["S4AL+"]["miou"] == paper["table1"]["camvid"][-1]["miou"]
    assert rows["tableS4"]["S4AL+"]["miou"] == paper["table1"]["cityscapes"][-1]["miou"]
    assert rows["tableS3"]["Supervised"]["miou"] == paper["al_metric"]["camvid"]["paper_supervised_miou"]
    assert rows["tableS4"]["Supervised"]["miou"] == paper["al_metric"]["cityscapes"]["paper_supervised_miou"]
    for table in ("tableS3", "tableS4"):
        for row in paper[table]["rows"]:
            assert len(row["iou"]) == len(paper[table]["classes"])
            # A transcription slip in one class would move the mean by > 0.05.
            assert abs(sum(row["iou"]) / len(row["iou"]) - row["miou"]) < 0.05, row["label"]


def _markdown_rows(text, caption_start, which=0):
    """Data rows (lists of cells) of the which-th Markdown table after a caption."""
    lines = text[text.index(caption_start):].splitlines()
    tables, current = [], None
    for line in lines:
        if line.startswith("|"):
            current = current if current is not None else []
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current is not None:
            tables.append(current[2:])  # drop the header and the |---| line
            current = None
            if len(tables) > which:
                break
    if current is not None:  # a table at the very end of the text
        tables.append(current[2:])
    return tables[which]


def test_paper_yaml_matches_the_paper_text(paper):
    texts = sorted(PAPER_TEXT_DIR.glob("*.txt")) if PAPER_TEXT_DIR.is_dir() else []
    if not texts:
        pytest.skip(f"paper text not available at {PAPER_TEXT_DIR}")
    text = texts[0].read_text()
    table1 = [float(r[-1]) for r in _markdown_rows(text, "Table 1: Summary")]
    ours = [r["miou"] for d in ("camvid", "cityscapes") for r in paper["table1"][d]]
    assert ours == table1
    epochs = [int(r[2]) for r in _markdown_rows(text, "Table 1: Summary")]
    assert [r["epochs"] for d in ("camvid", "cityscapes") for r in paper["table1"][d]] == epochs
    s1 = [[float(r[-2]), float(r[-1])] for r in _markdown_rows(text, "Table S1: Summary")]
    assert [r["miou_runs"] for r in paper["tableS1"]] == s1
    s3 = _markdown_rows(text, "Table S3: Active")
    assert [[float(c) for c in r[1:-1]] for r in s3] == [r["iou"] for r in paper["tableS3"]["rows"]]
    first = _markdown_rows(text, "Table S4: Active", which=0)
    second = _markdown_rows(text, "Table S4: Active", which=1)  # the paper splits S4 in two
    s4 = [[float(c) for c in a[1:]] + [float(c) for c in b[1:-1]] for a, b in zip(first, second)]
    assert s4 == [r["iou"] for r in paper["tableS4"]["rows"]]
    assert "mIoU of 66.4 on CamVid" in text and "mIoU of 67.5 with only 10%" in text


# ---------------------------------------------------------------- fabricated runs

CAMVID_CLASSES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
                  "pedestrian", "bicyclist"]


def _stage(name, kind, pct, miou, epochs=100, wall=600.0, per_class=None):
    return {"name": name, "kind": kind, "epochs": epochs, "labeled_pixel_pct": pct,
            "miou": miou, "wall_time_s": wall,
            "per_class_iou": per_class or {c: miou for c in CAMVID_CLASSES}}


def _write_summary(runs_dir, run_name, config, stages, finished=True, **extra):
    path = Path(runs_dir) / run_name / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"config": config, "finished": finished, "device": "NVIDIA H100 x4", "world_size": 4,
            "classes": CAMVID_CLASSES, "stages": stages, **extra}
    path.write_text(json.dumps(data))
    return path


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
    row6_iou = {c: 40.0 + i for i, c in enumerate(CAMVID_CLASSES)}
    _write_summary(runs, "table1/camvid/row6", "table1/camvid/row6", [
        _stage("teacher", "supervised", 10.0, 55.0, wall=1000.0),
        _stage("self_train", "self_train", 10.0, 58.0, wall=2000.0),
        _stage("query1", "query", 12.1, 63.3, epochs=150, wall=3600.0, per_class=row6_iou)])
    _write_summary(runs, "table1/camvid/row5", "table1/camvid/row5",
                   [_stage("teacher", "supervised", 10.0, 57.0)], finished=False, num_stages=3)
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
    _write_summary(runs, "tableS1/r50_100", "tableS1/r50_100",
                   [_stage("teacher", "supervised", 3.4, 57.0)], finished=False)
    _write_summary(runs, "tableS1/r50_100_seed1", "configs/tableS1/r50_100.yaml", [
        _stage("teacher", "supervised", 3.4, 57.5), _stage("round1", "self_train", 3.4, 60.1),
        _stage("round2", "self_train", 3.4, 61.2, epochs=240)])
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


def test_bad_summary_is_an_error_naming_file_and_key(tmp_path):
    path = _write_summary(tmp_path, "x", "table1/camvid/row1", [
        {"name": "teacher", "kind": "supervised", "epochs": 1, "labeled_pixel_pct": 10.0,
         "per_class_iou": {}, "wall_time_s": 1.0}])
    with pytest.raises(ValueError, match=r"summary\.json: stages\[0\]: missing key 'miou'"):
        read_summary(path)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_runs(tmp_path / "no_such_dir")


def test_per_class_name_mismatch_is_an_error(tmp_path):
    runs = tmp_path / "runs"
    iou = {c: 50.0 for c in CAMVID_CLASSES if c != "sign"}
    _write_summary(runs, "table1/camvid/row6", "table1/camvid/row6",
                   [_stage("query1", "query", 12.1, 50.0, per_class=iou)])
    with pytest.raises(ValueError, match="paper column 'Sign'"):
        summarize(runs)


# ---------------------------------------------------------------- the 95% metric

def _naive_first_reaching(curve, supervised, fraction):
    hits = [i for i, (_, miou) in enumerate(curve) if miou * 100 >= fraction * 100 * supervised]
    return curve[min(hits)][0] if hits else None


@pytest.mark.parametrize("curve,supervised", [
    ([(10.0, 50.0), (12.1, 61.0), (14.2, 62.0)], 64.0),   # 0.95 * 64 = 60.8 -> 12.1
    ([(10.0, 60.8), (12.1, 61.0)], 64.0),                  # exactly at the level counts
    ([(10.0, 50.0), (12.1, 55.0)], 64.0),                  # never reached
    ([(10.0, 58.0), (11.3, 62.0), (12.6, 59.0)], 64.0),    # first in stage order
])
def test_labeled_pct_reaching(curve, supervised):
    expected = _naive_first_reaching(curve, supervised, 0.95)
    assert labeled_pct_reaching(curve, supervised, 0.95) == expected


def test_al_metric_in_report(tmp_path, paper):
    runs = tmp_path / "runs"
    _write_summary(runs, "supervised/camvid_full", "supervised/camvid_full",
                   [_stage("full", "supervised", 100.0, 64.0)])
    for name, mious in (("table1/camvid/row6", [55.0, 58.0, 61.0]),
                        ("table1/camvid/row6_random", [55.0, 57.0, 59.0])):
        _write_summary(runs, name, name, [
            _stage(f"s{i}", k, p, m) for i, (k, p, m) in enumerate(
                zip(["supervised", "self_train", "query"], [10.0, 10.0, 12.1], mious))])
    cityscapes_iou = {spec["names"][0]: 50.0 for spec in paper["tableS4"]["classes"]}
    _write_summary(runs, "table1/cityscapes/row9", "table1/cityscapes/row9",
                   [_stage("teacher", "supervised", 10.0, 50.0, per_class=cityscapes_iou)])
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


def test_summarize_script_writes_the_report(fabricated_runs, tmp_path):
    runs, _ = fabricated_runs
    out = tmp_path / "report.md"
    result = subprocess.run([sys.executable, "experiments/summarize.py", str(runs), "--out",
                             str(out), "--no-plot"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| table1/camvid/row6 | 62.65 | 63.30 |" in out.read_text()
    assert "| table1/camvid/row6 | 62.65 | 63.30 |" in result.stdout


def test_summarize_main_in_process(fabricated_runs, tmp_path, capsys):
    runs, _ = fabricated_runs
    assert summarize_main([str(runs), "--out", str(tmp_path / "r.md"), "--no-plot"]) == 0
    assert "unfinished (stage 1/3)" in (tmp_path / "r.md").read_text()


# ---------------------------------------------------------------- reproduce

def _write_config(configs, name, **keys):
    path = configs / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(keys))


def _fabricated_camvid_configs(configs):
    """init_from edges (child -> parent), some set through _base_ files."""
    _write_config(configs, "_base_/camvid", model="mobilenet_v2", init_from=None)
    _write_config(configs, "_base_/from_row4", init_from="table1/camvid/row4")
    _write_config(configs, "_base_/from_row3", init_from="table1/camvid/row3")
    _write_config(configs, "supervised/camvid_full", _base_="../_base_/camvid.yaml")
    _write_config(configs, "table1/camvid/row1", _base_="../../_base_/camvid.yaml",
                  init_from="table1/camvid/row2")
    _write_config(configs, "table1/camvid/row2", _base_="../../_base_/camvid.yaml")
    _write_config(configs, "table1/camvid/row3", init_from="supervised/camvid_full")
    _write_config(configs, "table1/camvid/row4", init_from="configs/table1/camvid/row3.yaml")
    # Later _base_ entries override earlier ones: row5 starts from row3, not row4.
    _write_config(configs, "table1/camvid/row5",
                  _base_=["../../_base_/from_row4.yaml", "../../_base_/from_row3.yaml"])
    # The file's own key overrides its bases: row6 starts from nothing.
    _write_config(configs, "table1/camvid/row6", _base_="../../_base_/from_row4.yaml",
                  init_from=None)
    _write_config(configs, "table1/camvid/row6_random", _base_="../../_base_/from_row4.yaml")
    return {"table1/camvid/row1": "table1/camvid/row2",
            "table1/camvid/row3": "supervised/camvid_full",
            "table1/camvid/row4": "table1/camvid/row3", "table1/camvid/row5": "table1/camvid/row3",
            "table1/camvid/row6_random": "table1/camvid/row4"}


def _dry_run_configs(capsys, argv):
    assert reproduce.main(argv + ["--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, [re.search(r"--config (\S+)\.yaml", line).group(1) for line in lines[:-1]]


def test_reproduce_dry_run_orders_by_init_from(tmp_path, capsys):
    configs = tmp_path / "configs"
    edges = _fabricated_camvid_configs(configs)
    lines, paths = _dry_run_configs(capsys, ["table1_camvid", "--configs-dir", str(configs)])
    order = [str(Path(p).relative_to(configs)) for p in paths]
    # The table's configs plus the dependency outside it, each once.
    assert sorted(order) == sorted(reproduce.TABLE_CONFIGS["table1_camvid"] +
                                   ["supervised/camvid_full"])
    for child, parent in edges.items():
        assert order.index(parent) < order.index(child), (child, parent)
    for name in reproduce.TABLE_CONFIGS["table1_camvid"]:
        assert reproduce.read_init_from(name, configs) == edges.get(name), name
    # Otherwise the table's order is kept (dependencies placed just before their first user).
    assert order == ["table1/camvid/row2", "table1/camvid/row1", "supervised/camvid_full",
                     "table1/camvid/row3", "table1/camvid/row4", "table1/camvid/row5",
                     "table1/camvid/row6", "table1/camvid/row6_random"]
    assert all(line.startswith("torchrun --nproc_per_node 4 train_al.py --config ")
               for line in lines[:-1])
    assert lines[-1] == "python experiments/summarize.py runs"


def test_reproduce_dry_run_one_process_seed_and_overrides(tmp_path, capsys):
    configs = tmp_path / "configs"
    for name in reproduce.TABLE_CONFIGS["tableS1"]:
        _write_config(configs, name, model="resnet50")
    lines, _ = _dry_run_configs(capsys, ["tableS1", "--configs-dir", str(configs), "--nproc", "1",
                                         "--seed", "1", "--overrides", "data.root=/d"])
    assert lines[0] == (f"python train_ssl.py --config {configs.resolve()}/tableS1/r50_100.yaml data.root=/d "
                        "seed=1 output_dir=runs/tableS1/r50_100_seed1")
    assert len(lines) == 8


def test_reproduce_errors_name_the_problem(tmp_path):
    configs = tmp_path / "configs"
    _write_config(configs, "equal/camvid_r50", init_from="equal/cityscapes_r50")
    with pytest.raises(FileNotFoundError, match="equal/cityscapes_r50"):
        reproduce.build_commands("equal", configs)
    _write_config(configs, "equal/cityscapes_r50", init_from="equal/camvid_r50")
    with pytest.raises(ValueError, match="init_from cycle: equal/camvid_r50 -> equal/cityscapes_r50"
                                         " -> equal/camvid_r50"):
        reproduce.build_commands("equal", configs)
    with pytest.raises(ValueError, match="override 'seed1' is not of the form key=value"):
        reproduce.build_commands("supervised", configs, overrides=["seed1"])


def test_reproduce_dry_run_on_the_real_configs(capsys):
    for table, names in reproduce.TABLE_CONFIGS.items():
        _, paths = _dry_run_configs(capsys, [table])
        assert set(names) <= {p.removeprefix("configs/") for p in paths}


def test_reproduce_script_runs_from_the_shell(tmp_path):
    configs = tmp_path / "configs"
    for name in reproduce.TABLE_CONFIGS["supervised"]:
        _write_config(configs, name)
    result = subprocess.run(["bash", "experiments/reproduce.sh", "supervised", "--dry-run",
                             "--configs-dir", str(configs)], cwd=REPO_ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("train_al.py --config") == 2


def test_a_seed_run_reuses_its_own_seeds_init_from_chain_and_only_picks_configs():
    commands = dict(reproduce.build_commands("cpu_camvid", REPO_ROOT / "configs", nproc=1, seed=1,
                                             only=["cpu/camvid/row6"]))
    # row 6 starts from row 4, row 4 from row 2: all three run, each seed-1 run reads seed 1's parent.
    assert list(commands) == ["cpu/camvid/row2", "cpu/camvid/row4", "cpu/camvid/row6"]
    assert commands["cpu/camvid/row2"][-2:] == ["seed=1", "output_dir=runs/cpu/camvid/row2_seed1"]
    assert commands["cpu/camvid/row4"][-1] == "init_from_dir=runs/cpu/camvid/row2_seed1"
    assert commands["cpu/camvid/row6"][-1] == "init_from_dir=runs/cpu/camvid/row4_seed1"
    assert not any("init_from_dir" in arg for arg in
                   dict(reproduce.build_commands("cpu_camvid", REPO_ROOT / "configs", nproc=1))["cpu/camvid/row4"])
    with pytest.raises(ValueError, match="--only: cpu/camvid/row9 not in table 'cpu_camvid'"):
        reproduce.build_commands("cpu_camvid", REPO_ROOT / "configs", only=["cpu/camvid/row9"])


def test_section5_gains_beside_table1_and_ours(tmp_path):
    runs = tmp_path / "runs"
    _write_summary(runs, "table1/camvid/row1", "table1/camvid/row1", [_stage("teacher", "supervised", 10.1, 55.0)])
    _write_summary(runs, "table1/camvid/row2", "table1/camvid/row2", [_stage("teacher", "supervised", 10.1, 56.5)])
    section = summarize(runs).split("## Sec. 5's stated gains")[1].split("\n## ")[0]
    rows = {(c[0], c[1], c[3]): c for c in ([x.strip() for x in line.strip("|").split("|")]
                                          for line in section.splitlines() if line.startswith("| "))}
    reco = rows[("ReCo", "camvid", "`table1/camvid/row1` -> `table1/camvid/row2`")]
    assert reco[2:] == ["+2.0", reco[3], f"{60.11 - 58.42:+.2f}", f"{56.5 - 55.0:+.2f}", "55.00 -> 56.50"]
    st = rows[("self-training", "camvid", "`table1/camvid/row2` -> `table1/camvid/row4`")]
    assert st[2] == "+1.8" and st[4] == f"{60.92 - 60.11:+.2f}" and st[5] == "—" and st[6] == "56.50 -> missing"
