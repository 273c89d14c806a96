"""experiments/run_summaries.py: the paper's numbers as data (paper_results.yaml against the known
configs and the paper's text), run summaries read with errors naming the file and key, the 95%
metric."""
from pathlib import Path

import pytest

from experiments.run_summaries import labeled_pct_reaching, load_runs, paper_config_names, read_summary
from tests.helpers import REPO, summary_stage, write_summary

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


# ---------------------------------------------------------------- paper_results.yaml
def test_paper_yaml_names_exactly_the_known_configs(paper):
    assert set(paper_config_names(paper)) == KNOWN_CONFIGS


def test_every_named_config_file_exists():
    configs_dir = REPO / "configs"
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


# ---------------------------------------------------------------- run summaries
def test_bad_summary_is_an_error_naming_file_and_key(tmp_path):
    path = write_summary(tmp_path, "x", "table1/camvid/row1", [
        {"name": "teacher", "kind": "supervised", "epochs": 1, "labeled_pixel_pct": 10.0,
         "per_class_iou": {}, "wall_time_s": 1.0}])
    with pytest.raises(ValueError, match=r"summary\.json: stages\[0\]: missing key 'miou'"):
        read_summary(path)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_runs(tmp_path / "no_such_dir")


def test_a_bad_class_pixel_count_names_the_file_and_key(tmp_path):
    from experiments.run_summaries import read_summary
    path = write_summary(tmp_path, "r", "r", [{**summary_stage("q", "query", 12.0, 50.0),
                                               "queried_class_pixels": {"sky": -3}}])
    with pytest.raises(ValueError, match=r"summary.json: stages\[0\]: queried_class_pixels: 'sky'"):
        read_summary(path)


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
