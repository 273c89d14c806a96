"""Run summaries and paper numbers as Python objects, plus the paper's 95%-of-supervised metric.

A run directory's ``summary.json`` (written by train_al.py / train_ssl.py) is the only source of
"our" numbers; ``paper_results.yaml`` beside this file is the only source of the paper's.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

EXPERIMENTS_DIR = Path(__file__).resolve().parent
DEFAULT_PAPER_RESULTS = EXPERIMENTS_DIR / "paper_results.yaml"
PAPER_SECTIONS = ("table1", "random_baselines", "tableS1", "tableS2", "section5_claims", "equal",
                  "tableS3", "tableS4", "al_metric")
DATASETS = ("camvid", "cityscapes")
DASH = "—"  # a table cell with no value


def number_cell(value, signed: bool = False) -> str:
    """A table cell for an mIoU, a percentage or a difference of them: two decimals, or DASH."""
    if value is None:
        return DASH
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def normalize_config_name(name):
    """'configs/table1/camvid/row1.yaml' and 'table1/camvid/row1' name the same config."""
    name = str(name).strip().replace("\\", "/")
    if name.startswith("configs/"):
        name = name[len("configs/"):]
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def load_paper_results(path=DEFAULT_PAPER_RESULTS):
    """The paper's numbers as a dict; a missing section is an error naming it and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"paper results file not found: {path}")
    with open(path) as f:
        paper = yaml.safe_load(f)
    if not isinstance(paper, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for key in PAPER_SECTIONS:
        if key not in paper:
            raise ValueError(f"{path}: missing section '{key}'")
    return paper


def paper_config_names(paper):
    """Every config name the paper results refer to (reference-only rows have none)."""
    names = []
    for dataset in DATASETS:
        names += [row["config"] for row in paper["table1"][dataset]]
        names += [row["pct_twin"] for row in paper["table1"][dataset] if row.get("pct_twin")]
        names.append(paper["random_baselines"][dataset]["config"])
        names.append(paper["al_metric"][dataset]["supervised_config"])
    names += [row["config"] for row in paper["tableS1"]]
    names += [row[key] for row in paper["tableS2"] for key in ("config", "suponly_config")]
    names += [row["config"] for row in paper["equal"]]
    for table in ("tableS3", "tableS4"):
        names += [row["config"] for row in paper[table]["rows"] if row["config"] is not None]
    return sorted(set(names))


@dataclass
class Run:
    """One run directory's summary.json, validated."""
    config: str
    run_dir: Path
    finished: bool
    device: str
    stages: list
    num_stages: object = None  # total stages planned, when the summary records it

    @property
    def final_miou(self):
        return self.stages[-1]["miou"] if self.stages else None

    @property
    def curve(self):
        """(labeled pixel %, mIoU) after every stage, in stage order: the Fig. 3 points."""
        return [(s["labeled_pixel_pct"], s["miou"]) for s in self.stages]

    @property
    def wall_time_s(self):
        return sum(s["wall_time_s"] for s in self.stages)

    def stage_named(self, name):
        matches = [s for s in self.stages if s["name"] == name]
        return matches[0] if matches else None

    def status(self):
        """'finished' or 'unfinished (stage k/n)' with k = stages done."""
        if self.finished:
            return "finished"
        total = "?" if self.num_stages is None else self.num_stages
        return f"unfinished (stage {len(self.stages)}/{total})"


def _require(mapping, key, where, types):
    if key not in mapping:
        raise ValueError(f"{where}: missing key '{key}'")
    value = mapping[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        raise ValueError(f"{where}: key '{key}' has type {type(value).__name__}")
    return value


# What a query stage revealed and what the pool held after it: {class name or "void": pixels}.
CLASS_PIXEL_KEYS = ("queried_class_pixels", "pool_class_pixels")


def _check_class_pixels(counts, where):
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}: '{name}' must be a pixel count (int >= 0), got {value!r}")


def read_summary(path):
    """Parse and validate one summary.json into a Run (errors name the file and the key)."""
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    number = (int, float)
    config = _require(data, "config", path, (str,))
    finished = _require(data, "finished", path, (bool,))
    device = _require(data, "device", path, (str,))
    stages = _require(data, "stages", path, (list,))
    for i, stage in enumerate(stages):
        where = f"{path}: stages[{i}]"
        if not isinstance(stage, dict):
            raise ValueError(f"{where}: expected an object")
        _require(stage, "name", where, (str,))
        _require(stage, "kind", where, (str,))
        _require(stage, "per_class_iou", where, (dict,))
        for key in ("epochs", "labeled_pixel_pct", "miou", "wall_time_s"):
            _require(stage, key, where, number)
        for key in CLASS_PIXEL_KEYS:  # optional: query stages of runs that record them
            if key in stage:
                _check_class_pixels(_require(stage, key, where, (dict,)), f"{where}: {key}")
    if finished and not stages:
        raise ValueError(f"{path}: finished run with no stages")
    # Optional: lets an unfinished run read "stage k/n" instead of "stage k/?".
    num_stages = _require(data, "num_stages", path, (int,)) if "num_stages" in data else None
    return Run(config=normalize_config_name(config), run_dir=path.parent, finished=finished,
               device=device, stages=stages, num_stages=num_stages)


def load_runs(runs_dir, skipped=None):
    """{config name: [Run, ...]} for every summary.json under runs_dir (sorted by run dir).
    With a `skipped` list, an unreadable summary is appended to it as (path, why) and the other
    runs are still read; without one it is an error."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs directory not found: {runs_dir}")
    runs = {}
    for path in sorted(runs_dir.rglob("summary.json")):
        try:
            run = read_summary(path)
        except (ValueError, OSError) as err:
            if skipped is None:
                raise
            skipped.append((path, str(err)))
            continue
        runs.setdefault(run.config, []).append(run)
    return runs


def dataset_of(config):
    """'camvid' / 'cityscapes' when the config name says so, else None."""
    tokens = set(config.replace("/", "_").split("_"))
    found = [d for d in DATASETS if d in tokens]
    return found[0] if len(found) == 1 else None


def is_active_learning_run(run):
    """Table 1 / EquAL runs, and any run with a query stage (e.g. a user's own AL config)."""
    if run.config.startswith("supervised/") or run.config.startswith("tableS1/"):
        return False
    return run.config.startswith(("table1/", "equal/")) or any(
        s["kind"] == "query" for s in run.stages)


def labeled_pct_reaching(curve, supervised_miou, fraction=0.95):
    """First labeled % (in stage order) whose mIoU >= fraction * supervised mIoU, else None."""
    threshold = fraction * supervised_miou
    for pct, miou in curve:
        if miou >= threshold:
            return pct
    return None
