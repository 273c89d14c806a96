"""The CPU-scale proxy of Table 1 (CamVid), `configs/cpu/camvid/*`, beside the paper's rows.

A proxy, not a reproduction: EfficientNet-Lite0 instead of MobileNetV2, 180x240 instead of
360x480, a tenth of the steps (configs/_base_/camvid_cpu.yaml). So our mIoUs are not compared
with the paper's; the *changes* between rows are, one finding at a time:

    ReCo helps (row 1 -> 2), self-training helps (2 -> 3, 2 -> 4), a query cycle helps (4 -> 5),
    the longer final cycle helps (5 -> 6), entropy beats random at equal budget (random -> 6).

A finding is read from the seeds of both rows (every run directory whose summary names the
config: runs/cpu/camvid/row2, runs/cpu/camvid/row2_seed1, ...). A row's change is the difference
of the two rows' means over the seeds both have (all of them once both rows ran the same seeds):
a row with seed 0 only is compared with seed 0 of the row before, not with a mean that holds a
seed it never ran. The rule, stated once:
- "supports" / "contradicts": at least 2 seeds on each side, the mean change is larger than the
  seed spread (max - min) of either row, and it has the paper's sign / the other sign;
- "not resolved": the change is inside the seed spread;
- "cannot tell": fewer than 2 seeds on a side (no spread to compare with).
With 2 seeds or more on both sides, the verdict also lists the change within each seed: a row and
the row before it share their earlier stages seed by seed (row 6 and its random twin the same
teacher and student), so these paired changes show whether the sign holds seed by seed. They do
not change the verdict: with a few pairs they are a reading, not a test.

    python experiments/cpu_proxy.py [runs_dir=runs]      # the Markdown table and findings
    (experiments/summarize.py includes the same section and draws experiments/fig3_cpu.png)
"""
from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.run_summaries import DASH, labeled_pct_reaching, number_cell  # noqa: E402

PREFIX = "cpu/camvid/"
# (our config, the paper row it stands for, the row it is compared with: the previous row)
ROWS = [
    ("cpu/camvid/row1", "table1/camvid/row1", None),
    ("cpu/camvid/row2", "table1/camvid/row2", "cpu/camvid/row1"),
    ("cpu/camvid/row3", "table1/camvid/row3", "cpu/camvid/row2"),
    ("cpu/camvid/row4", "table1/camvid/row4", "cpu/camvid/row2"),
    ("cpu/camvid/row5", "table1/camvid/row5", "cpu/camvid/row4"),
    ("cpu/camvid/row6", "table1/camvid/row6", "cpu/camvid/row5"),
    ("cpu/camvid/row6_random", None, "cpu/camvid/row6"),
]
SUPERVISED = ("cpu/camvid/supervised_full", "supervised/camvid_full")
FINDINGS = [  # (claim, before, after): the paper says after > before
    ("ReCo helps", "cpu/camvid/row1", "cpu/camvid/row2"),
    ("self-training helps (2 + 2 per step)", "cpu/camvid/row2", "cpu/camvid/row3"),
    ("self-training helps (2 + 4 per step)", "cpu/camvid/row2", "cpu/camvid/row4"),
    ("a query cycle helps", "cpu/camvid/row4", "cpu/camvid/row5"),
    ("the longer final cycle helps", "cpu/camvid/row5", "cpu/camvid/row6"),
    ("entropy beats random at equal budget", "cpu/camvid/row6_random", "cpu/camvid/row6"),
]


def is_cpu_proxy(config: str) -> bool:
    return config.startswith(PREFIX)


def seed_runs(runs, config) -> list:
    """The runs of `config` that are seeds of it: runs/<config> and runs/<config>_seed<S>, not
    a variant run from the same config with other overrides (e.g. row1_scratch)."""
    name = Path(config).name
    return [r for r in runs.get(config, []) if re.fullmatch(rf"{re.escape(name)}(_seed\d+)?", r.run_dir.name)]


def seed_of(run) -> int:
    """runs/<config> is seed 0 (reproduce.py's default), runs/<config>_seed<S> seed S."""
    found = re.search(r"_seed(\d+)$", run.run_dir.name)
    return int(found.group(1)) if found else 0


def _minutes(seconds):
    return f"{seconds / 60:.1f} min"


class Seeds:
    """The finished runs of one config: their final mIoUs, mean and spread."""

    def __init__(self, runs):
        self.runs = [r for r in runs if r.finished]
        self.mious = [r.final_miou for r in self.runs]
        self.by_seed = {seed_of(r): r.final_miou for r in self.runs}

    @property
    def n(self):
        return len(self.mious)

    @property
    def mean(self):
        return statistics.fmean(self.mious) if self.mious else None

    @property
    def spread(self):
        return max(self.mious) - min(self.mious) if self.n >= 2 else None

    def cell(self):
        if not self.n:
            return "not run"
        if self.n == 1:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ± {self.spread / 2:.2f} ({self.n} seeds: {', '.join(f'{m:.2f}' for m in self.mious)})"


def shared_seeds(before: Seeds, after: Seeds) -> list[int]:
    return sorted(set(before.by_seed) & set(after.by_seed))


def change(before: Seeds, after: Seeds) -> float | None:
    """`after` minus `before`: over the seeds both rows have, else (no seed in common) over all."""
    common = shared_seeds(before, after)
    if common:
        return statistics.fmean(after.by_seed[s] - before.by_seed[s] for s in common)
    return after.mean - before.mean if before.n and after.n else None


def verdict(before: Seeds, after: Seeds, paper_sign: int = 1) -> str:
    if before.n < 2 or after.n < 2:
        if before.n and after.n:
            return f"cannot tell ({min(before.n, after.n)} seed): {change(before, after):+.2f}"
        return "cannot tell (not run)"
    diff = change(before, after)
    spread = max(before.spread, after.spread)
    paired = shared_seeds(before, after)
    per_seed = ", ".join(f"{after.by_seed[s] - before.by_seed[s]:+.2f} (seed {s})" for s in paired)
    per_seed = f"; per seed: {per_seed}" if len(paired) >= 2 else ""
    if abs(diff) <= spread:
        return f"not resolved: {diff:+.2f} is inside the seed spread {spread:.2f}{per_seed}"
    word = "supports" if diff * paper_sign > 0 else "contradicts"
    return f"{word}: {diff:+.2f}, beyond the seed spread {spread:.2f}{per_seed}"


def _paper_miou(paper, config):
    if config is None:
        return None
    if config == SUPERVISED[1]:
        return paper["al_metric"]["camvid"]["paper_supervised_miou"]
    return next(r["miou"] for r in paper["table1"]["camvid"] if r["config"] == config)


def _last_stage_wall(seeds: Seeds):
    times = [r.stages[-1]["wall_time_s"] for r in seeds.runs]
    return f"{seeds.runs[0].stages[-1]['name']}: {_minutes(statistics.fmean(times))}" if times else DASH


def table_lines(paper, runs) -> list:
    """The Markdown table: one row per config, ours beside the paper's."""
    header = ["config (paper row)", "ours: mIoU, mean ± half spread", "our change", "paper mIoU",
              "paper change", "labeled % (ours / paper)", "wall time of the row's own stage"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paper_pct = {r["config"]: r["labeled_pct"] for r in paper["table1"]["camvid"]}
    for config, paper_row, previous in ROWS + [(SUPERVISED[0], SUPERVISED[1], None)]:
        seeds = Seeds(seed_runs(runs, config))
        before = Seeds(seed_runs(runs, previous)) if previous else None
        ours_change = change(before, seeds) if before else None
        p = _paper_miou(paper, paper_row)
        p_prev = _paper_miou(paper, dict((c, r) for c, r, _ in ROWS).get(previous)) if previous else None
        pct = f"{seeds.runs[0].stages[-1]['labeled_pixel_pct']:.2f}" if seeds.n else DASH
        ppct = paper_pct.get(paper_row, 100.0 if config == SUPERVISED[0] else None)
        name = f"`{config}` ({paper_row or 'random twin of row 6'})"
        lines.append("| " + " | ".join([
            name, seeds.cell(), number_cell(ours_change, signed=True), number_cell(p),
            number_cell(p - p_prev, signed=True) if p is not None and p_prev is not None else DASH,
            f"{pct} / {number_cell(ppct)}", _last_stage_wall(seeds)]) + " |")
    return lines + [""]


def findings_lines(runs) -> list:
    lines = ["| the paper's finding | rows | this scale |", "|---|---|---|"]
    for claim, before, after in FINDINGS:
        rows = f"{before.removeprefix(PREFIX)} -> {after.removeprefix(PREFIX)}"
        lines.append(f"| {claim} | {rows} | {verdict(Seeds(seed_runs(runs, before)), Seeds(seed_runs(runs, after)))} |")
    return lines + [""]


def target_lines(paper, runs, fraction) -> list:
    """The 95%-of-supervised check on the proxy: which labeled % first reaches 95% of our own
    supervised (100%) mIoU, per AL run."""
    supervised = Seeds(seed_runs(runs, SUPERVISED[0]))
    if not supervised.n:
        return [f"{fraction:.0%} of supervised: no finished `{SUPERVISED[0]}` run.", ""]
    level = fraction * supervised.mean
    lines = [f"{fraction:.0%} of our supervised 100% mean ({supervised.mean:.2f}) = {level:.2f} mIoU:", ""]
    for config in ("cpu/camvid/row6", "cpu/camvid/row6_random"):
        for run in Seeds(seed_runs(runs, config)).runs:
            pct = labeled_pct_reaching(run.curve, supervised.mean, fraction)
            best = max(run.curve, key=lambda point: point[1])
            reached = f"reached at {pct:.2f}% labeled" if pct is not None else \
                f"not reached (best {best[1]:.2f} at {best[0]:.2f}% labeled)"
            lines.append(f"- `{run.run_dir.name}` ({config}): {reached}")
    paper_level = fraction * _paper_miou(paper, SUPERVISED[1])
    lines += ["", f"The paper's: 95% of 63.55 = {paper_level:.2f}, reached by row 6 (62.65) at 12.1%.", ""]
    return lines


def scratch_lines(runs) -> list:
    """Row 1 from ImageNet against the same run from scratch (runs/cpu/camvid/row1_scratch:
    model.pretrained=none stages.teacher.init=scratch): the weights must win by a wide margin."""
    scratch = [r for r in runs.get("cpu/camvid/row1", []) if r.run_dir.name == "row1_scratch" and r.finished]
    pretrained = Seeds(seed_runs(runs, "cpu/camvid/row1"))
    if not scratch or not pretrained.n:
        return []
    first = next((r for r in pretrained.runs if r.run_dir.name == "row1"), pretrained.runs[0])
    return [f"ImageNet weights against none, row 1 (seed 0, same steps): {first.final_miou:.2f} from "
            f"EfficientNet-Lite0's ImageNet weights, {scratch[0].final_miou:.2f} from scratch "
            f"({first.final_miou - scratch[0].final_miou:+.2f}).", ""]


def section_lines(paper, runs, fraction=0.95) -> list:
    if not any(is_cpu_proxy(name) for name in runs):
        return []
    lines = ["## CPU-scale proxy of Table 1 (CamVid): configs/cpu/camvid", "",
             "EfficientNet-Lite0 (ImageNet) instead of MobileNetV2, 180x240 with 15x15 regions (the "
             "paper's 12x16 grid), a tenth of the paper's steps, evaluated on val. Compare the changes "
             "between rows, not the mIoUs. Paper change = the row's mIoU minus the previous row's "
             "(row 4 and row 3 are both compared with row 2).", ""]
    lines += table_lines(paper, runs)
    lines += findings_lines(runs)
    lines += target_lines(paper, runs, fraction)
    lines += scratch_lines(runs)
    return lines


PLOT_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:red", "tab:gray")


def plot_cpu_proxy(paper, runs, out_path) -> None:
    """Fig. 3-style: mIoU against labeled %, the paper's Table 1 CamVid points (left) and the
    proxy's runs (right), each with its own supervised-100% level and 95% line."""
    from experiments.plot import _import_matplotlib, save_figure
    Figure, FigureCanvasAgg = _import_matplotlib()
    figure = Figure(figsize=(15, 5))
    FigureCanvasAgg(figure)
    left = figure.add_subplot(1, 2, 1)
    rows = paper["table1"]["camvid"]
    left.plot([r["labeled_pct"] for r in rows], [r["miou"] for r in rows], "k*", markersize=10,
              label="paper, Table 1 rows (MobileNetV2, 360x480)")
    for r in rows:
        left.annotate(r["config"].rsplit("/", 1)[-1], (r["labeled_pct"], r["miou"]), textcoords="offset points",
                      xytext=(6, -3), fontsize=8)
    paper_sup = paper["al_metric"]["camvid"]["paper_supervised_miou"]
    left.axhline(paper_sup, color="gray", linestyle=":", label=f"paper supervised 100% ({paper_sup:.2f})")
    left.axhline(0.95 * paper_sup, color="gray", linestyle="--", label=f"95% of it ({0.95 * paper_sup:.2f})")
    right = figure.add_subplot(1, 2, 2)
    # One colour per config, its seeds alike: filled markers for seed 0, hollow for the others, so
    # the seed spread shows as points of one colour. Named once, at the seed-0 run's last point.
    for colour, (config, _, _) in zip(PLOT_COLOURS, ROWS):
        seeds = Seeds(seed_runs(runs, config))
        random_query = config.endswith("_random")
        for n, run in enumerate(sorted(seeds.runs, key=seed_of)):
            seed = seed_of(run)
            xs, ys = zip(*run.curve)
            right.plot(xs, ys, linestyle="--" if random_query else "-", marker="s" if random_query else "o",
                       markersize=5, linewidth=1.0, color=colour, markerfacecolor=colour if seed == 0 else "white",
                       label=f"{config.removeprefix(PREFIX)} ({seeds.n} seeds)" if n == 0 else None)
            if seed == 0:
                right.annotate(config.removeprefix(PREFIX), (xs[-1], ys[-1]), textcoords="offset points",
                               xytext=(6, -3), fontsize=8, color=colour)
    supervised = Seeds(seed_runs(runs, SUPERVISED[0]))
    if supervised.n:
        right.axhline(supervised.mean, color="black", linestyle=":",
                      label=f"ours supervised 100% ({supervised.mean:.2f})")
        right.axhline(0.95 * supervised.mean, color="black", linestyle="--",
                      label=f"95% of it ({0.95 * supervised.mean:.2f})")
    right.set_title("(b) CamVid, CPU-scale proxy\n(EfficientNet-Lite0, 180x240, 1/10 of the steps, val)")
    left.set_title("(a) CamVid, the paper\n(MobileNetV2, 360x480, test)")
    for axes in (left, right):
        axes.set_xlim(9.5, 13.0)  # the AL range; supervised 100% is a horizontal line
        axes.set_xlabel("labeled pixels (%)")
        axes.set_ylabel("mIoU (%)")
        axes.grid(True, alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                 title="filled: seed 0, hollow: seed 1+", title_fontsize=7)
    save_figure(figure, out_path)


def main(argv=None) -> int:
    from experiments.run_summaries import load_paper_results, load_runs
    argv = sys.argv[1:] if argv is None else argv
    runs_dir = argv[0] if argv else "runs"
    print("\n".join(section_lines(load_paper_results(), load_runs(runs_dir))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
