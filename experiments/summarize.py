"""Put our runs next to the paper's numbers: a Markdown report and a Fig. 3-like plot.

    python experiments/summarize.py [runs_dir=runs] [--out experiments/report.md]
                                    [--plot experiments/fig3.png | --no-plot]

Reads every ``summary.json`` under ``runs_dir`` (recursively: config names contain slashes),
matches runs to ``experiments/paper_results.yaml`` by their ``"config"`` and prints/writes one
table per paper table. An absent run is shown as ``missing``; a run whose summary says
``"finished": false`` as ``unfinished (stage k/n)`` (k stages done, n = the summary's
``num_stages`` or ``?``). Every number shown comes from a summary or from the paper.
Difference = ours - paper.
"""
import argparse
import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.io import atomic_write_text  # noqa: E402
from experiments import cpu_proxy  # noqa: E402
from experiments.run_summaries import (  # noqa: E402
    DASH, DATASETS, DEFAULT_PAPER_RESULTS, EXPERIMENTS_DIR, dataset_of, is_active_learning_run,
    labeled_pct_reaching, load_paper_results, load_runs, number_cell, paper_config_names)

def _diff(ours, paper):
    return DASH if ours is None or paper is None else number_cell(ours - paper, signed=True)


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _run_label(run, runs_dir):
    """The config name, plus the run directory when it is not the default runs/<config>."""
    if run.run_dir.resolve() == (Path(runs_dir) / run.config).resolve():
        return run.config
    return f"{run.config} [{run.run_dir}]"


MISSING = {"ours": "missing", "miou": None, "pct": DASH, "epochs": DASH, "wall": DASH,
           "device": DASH}


def _result_cells(run):
    """Our side of a row: mIoU text (or status), mIoU, labeled %, epochs, wall time, device."""
    if not run.finished:
        return {"ours": run.status(), "miou": None, "pct": DASH, "epochs": DASH,
                "wall": f"{_duration(run.wall_time_s)} so far", "device": run.device}
    last = run.stages[-1]
    return {"ours": number_cell(last["miou"]), "miou": last["miou"],
            "pct": number_cell(last["labeled_pixel_pct"]), "epochs": str(last["epochs"]),
            "wall": _duration(run.wall_time_s), "device": run.device}


def _results_of(config, runs, runs_dir):
    """(row label, our cells) for every run of a config, or one 'missing' row."""
    found = runs.get(config, [])
    if not found:
        return [(config, MISSING)]
    return [(_run_label(run, runs_dir), _result_cells(run)) for run in found]


def _comparison_rows(entries, runs, runs_dir):
    """Rows config | paper mIoU | ours | difference | labeled % | epochs | wall time | device.

    entries: (config, paper mIoU or None, paper labeled % or None, paper epochs or None).
    """
    rows = []
    for config, paper_miou, paper_pct, paper_epochs in entries:
        for label, ours in _results_of(config, runs, runs_dir):
            rows.append([label, number_cell(paper_miou), ours["ours"], _diff(ours["miou"], paper_miou),
                         f"{number_cell(paper_pct)} / {ours['pct']}",
                         f"{paper_epochs or DASH} / {ours['epochs']}", ours["wall"],
                         ours["device"]])
    return rows


COMPARISON_HEADER = ["config", "paper mIoU", "ours", "difference",
                     "labeled % (paper / ours)", "epochs (paper / ours)", "wall time", "device"]


def _table1_section(paper, runs, runs_dir):
    lines = []
    for dataset in DATASETS:
        entries = []
        for r in paper["table1"][dataset]:
            entries.append((r["config"], r["miou"], r["labeled_pct"], r["epochs"]))
            if r.get("pct_twin"):  # the same row with Table 1's labelled percentage
                entries.append((r["pct_twin"], r["miou"], r["labeled_pct"], r["epochs"]))
        baseline = paper["random_baselines"][dataset]
        twin = [r for r in paper["table1"][dataset] if r["config"] == baseline["entropy_twin"]][0]
        entries.append((baseline["config"], None, twin["labeled_pct"], twin["epochs"]))
        lines += [f"## Table 1 — active learning, {dataset}", ""]
        lines += _table(COMPARISON_HEADER, _comparison_rows(entries, runs, runs_dir))
        lines += [f"`{baseline['config']}` is the random-region query baseline of "
                  f"`{baseline['entropy_twin']}` (no paper number).", ""]
    lines += ["'ours' is the final model of a run's last stage (`miou` in summary.json), not the best "
              "evaluation during training (kept beside it as `best`). Our labeled % is exact pixel "
              "accounting. Two readings of the paper: `rowN` reveals 4 regions in every unlabeled "
              "image per cycle (11.95% for CamVid rows 5/6, 11.42 / 12.83 / 14.23 / 15.64% for "
              "Cityscapes rows 5-8, where Table 1 says 12.1% and 11.3 / 12.6 / 13.8 / 15.1%); "
              "`rowN_pct` reveals Table 1's percentage (global selection, `query.budget_pct`) and ends "
              "at 12.10% and 11.29 / 12.56 / 13.83 / 15.10%. The arithmetic is in experiments/NOTES.md.", ""]
    return lines


def _equal_and_supervised_section(paper, runs, runs_dir):
    lines = ["## EquAL comparison (Sec. 4.2)", ""]
    entries = [(e["config"], e["miou"], e["labeled_pct"], None) for e in paper["equal"]]
    lines += _table(COMPARISON_HEADER, _comparison_rows(entries, runs, runs_dir))
    for e in paper["equal"]:
        others = ", ".join(f"{o['method']} {o['miou']:.2f} at {o['labeled_pct']:g}%"
                           for o in e["others"])
        lines.append(f"- {e['dataset']}: start {e['start_pct']:g}% -> {e['labeled_pct']:g}%; "
                     f"paper's other methods: {others}.")
    lines += ["", "## Supervised, 100% labels (Tables S3/S4 'Supervised' rows)", ""]
    entries = [(paper["al_metric"][d]["supervised_config"],
                paper["al_metric"][d]["paper_supervised_miou"], 100.0, None) for d in DATASETS]
    return lines + _table(COMPARISON_HEADER, _comparison_rows(entries, runs, runs_dir))


def _table_s1_section(paper, runs, runs_dir):
    header = ["config", "LD images", "paper Run 1", "paper Run 2", "ours",
              "difference (vs paper mean)", "labeled % (ours)", "epochs (paper / ours)",
              "wall time", "device"]
    rows = []
    for entry in paper["tableS1"]:
        run1, run2 = entry["miou_runs"]
        mean = (run1 + run2) / 2
        for label, ours in _results_of(entry["config"], runs, runs_dir):
            rows.append([label, entry["labeled_images"], number_cell(run1), number_cell(run2), ours["ours"],
                         _diff(ours["miou"], mean), ours["pct"],
                         f"{entry['epochs']} / {ours['epochs']}", ours["wall"], ours["device"]])
    lines = ["## Table S1 — semi-supervised learning, Cityscapes", ""]
    lines += _table(header, rows)
    lines += ["Seeds: every run directory whose summary names the config is listed "
              "(e.g. `runs/<config>_seed1`).", ""]
    return lines


S2_METHODS = (("st_pp", "ST++"), ("mean_teacher", "Mean Teacher"), ("cct", "CCT"), ("cps", "CPS"),
              ("ael", "AEL"), ("u2pl", "U2PL"))


def _final_miou(config, runs):
    """The first run's final mIoU as text ('missing', or its status when unfinished), and the value."""
    found = runs.get(config, [])
    if not found:
        return "missing", None
    cells = _result_cells(found[0])
    return cells["ours"], cells["miou"]


def _table_s2_section(paper, runs, runs_dir):
    lines = ["## Table S2 — semi-supervised learning, Cityscapes", "",
             "The paper's table (its U2PL column has a header and no values; '—' = not reported; "
             "R50 rows are the paper's ResNet-50 ones):", ""]
    paper_rows = [[e["ratio"], e["labeled_images"], e["backbone"], number_cell(e["suponly"]), number_cell(e["suponly_rep"])]
                  + [number_cell(e[key]) for key, _ in S2_METHODS] + [number_cell(e["s4al_plus"])] for e in paper["tableS2"]]
    lines += _table(["ratio", "LD images", "backbone", "SupOnly", "SupOnly+Rep"]
                    + [label for _, label in S2_METHODS] + ["S4AL+"], paper_rows)
    header = ["config", "ratio", "backbone", "paper SupOnly", "ours SupOnly (tableS2/suponly_*)",
              "paper SupOnly+Rep", "ours SupOnly+Rep (teacher stage)", "ours - SupOnly+Rep",
              "paper S4AL+", "ours S4AL+ (final)"]
    rows = []
    for e in paper["tableS2"]:
        suponly_text, _ = _final_miou(e["suponly_config"], runs)
        start = [e["ratio"], e["backbone"], number_cell(e["suponly"]), suponly_text, number_cell(e["suponly_rep"])]
        found = runs.get(e["config"], [])
        if not found:
            rows.append([e["config"]] + start + ["missing", DASH, number_cell(e["s4al_plus"]), "missing"])
        for run in found:
            stage = run.stage_named(e["stage"])
            final = _result_cells(run)["ours"]
            if stage is None:
                why = f"no '{e['stage']}' stage" + ("" if run.finished else f" ({run.status()})")
                rows.append([_run_label(run, runs_dir)] + start + [why, DASH, number_cell(e["s4al_plus"]), final])
            else:
                rows.append([_run_label(run, runs_dir)] + start +
                            [number_cell(stage["miou"]), _diff(stage["miou"], e["suponly_rep"]),
                             number_cell(e["s4al_plus"]), final])
    lines += ["Ours: SupOnly is `tableS2/suponly_<row>` (the teacher without ReCo); SupOnly+Rep the teacher "
              "stage (CE + ReCo) of the Table S1 config; S4AL+ its final stage.", ""]
    return lines + _table(header, rows)


def _section5_section(paper, runs, runs_dir):
    """Sec. 5's stated gains beside Table 1's difference for the same two rows and ours."""
    table1 = {r["config"]: r["miou"] for rows in paper["table1"].values() for r in rows}
    rows = []
    for c in paper["section5_claims"]:
        without_text, without = _final_miou(c["without"], runs)
        with_text, with_ = _final_miou(c["with"], runs)
        ours = _diff(with_, without) if with_ is not None and without is not None else DASH
        rows.append([c["component"], c["dataset"], f"{c['stated_gain']:+.1f}",
                     f"`{c['without']}` -> `{c['with']}`", f"{table1[c['with']] - table1[c['without']]:+.2f}",
                     ours, f"{without_text} -> {with_text}"])
    lines = ["## Sec. 5's stated gains (MobileNetV2 active learning)", ""]
    lines += _table(["component", "dataset", "stated gain", "Table 1 rows (without -> with)",
                     "Table 1 difference", "ours (with - without)", "our mIoUs"], rows)
    return lines + ["The paper names no rows for its gains; these pairs differ in that component only "
                    "(experiments/paper_results.yaml, `section5_claims`).", ""]


def _normalized(name):
    return re.sub(r"[\s_\-]", "", name.lower())


def _per_class_values(run, class_specs):
    """Our last stage's IoU per paper column, matched by name; an unmatched class is an error."""
    ours = {_normalized(name): value for name, value in run.stages[-1]["per_class_iou"].items()}
    values = []
    for spec in class_specs:
        hits = {n for n in map(_normalized, spec["names"]) if n in ours}
        if len(hits) != 1:
            raise ValueError(
                f"{run.run_dir / 'summary.json'}: per_class_iou of the last stage has "
                f"{'no' if not hits else 'several'} class(es) for paper column "
                f"'{spec['paper']}' (accepted names {spec['names']}, found {sorted(ours)})")
        values.append(ours[hits.pop()])
    return values


def _per_class_section(paper, table_key, runs, runs_dir):
    table = paper[table_key]
    specs = table["classes"]
    header = ["row"] + [spec["paper"] for spec in specs] + ["mIoU"]
    rows = []
    for row in table["rows"]:
        rows.append([f"paper: {row['label']}"] + [number_cell(v) for v in row["iou"]] +
                    [number_cell(row["miou"])])
        if row["config"] is None:
            continue  # another method's row: a reference line only
        found = runs.get(row["config"], [])
        if not found:
            rows.append([f"ours: {row['config']} — missing"] + [DASH] * (len(specs) + 1))
        for run in found:
            label = f"ours: {_run_label(run, runs_dir)}"
            if not run.finished:
                rows.append([f"{label} — {run.status()}"] + [DASH] * (len(specs) + 1))
                continue
            values = _per_class_values(run, specs)
            rows.append([label] + [number_cell(v) for v in values] + [number_cell(run.final_miou)])
            rows.append(["difference"] + [_diff(o, p) for o, p in zip(values, row["iou"])] +
                        [_diff(run.final_miou, row["miou"])])
    title = {"tableS3": "Table S3 — per-class IoU, CamVid",
             "tableS4": "Table S4 — per-class IoU, Cityscapes"}[table_key]
    return [f"## {title}", ""] + _table(header, rows)


def _al_metric_section(paper, runs, runs_dir):
    metric = paper["al_metric"]
    fraction = metric["fraction_of_supervised"]
    header = ["dataset", "paper's claim", "from the paper's Table 1 points", "AL run",
              "supervised run (ours)", f"{fraction:.0%} level", "ours: first labeled % reaching it"]
    rows = []
    for dataset in DATASETS:
        spec = metric[dataset]
        paper_curve = [(r["labeled_pct"], r["miou"]) for r in paper["table1"][dataset]]
        from_paper = labeled_pct_reaching(paper_curve, spec["paper_supervised_miou"], fraction)
        start = [dataset, f"{spec['paper_labeled_pct']:g}%",
                 "not reached" if from_paper is None else f"{from_paper:g}%"]
        al_runs = [run for found in runs.values() for run in found
                   if dataset_of(run.config) == dataset and is_active_learning_run(run)
                   and not cpu_proxy.is_cpu_proxy(run.config)]
        supervised = [r for r in runs.get(spec["supervised_config"], []) if r.finished]
        if not al_runs:
            rows.append(start + ["no AL run", DASH, DASH, DASH])
        for run in al_runs:
            if not supervised:
                rows.append(start + [_run_label(run, runs_dir), "no supervised run", DASH,
                                     "no supervised run"])
            for sup in supervised:
                pct = labeled_pct_reaching(run.curve, sup.final_miou, fraction)
                rows.append(start + [_run_label(run, runs_dir),
                                     f"{_run_label(sup, runs_dir)}: {number_cell(sup.final_miou)}",
                                     number_cell(fraction * sup.final_miou),
                                     "not reached" if pct is None else f"{pct:g}%"])
    lines = [f"## Active-learning metric: labeled pixel % at {fraction:.0%} of supervised", ""]
    lines += _table(header, rows)
    lines += ["'From the paper's Table 1 points' applies the same rule to the paper's own "
              "Table 1 (x = labeled % of each row) and its supervised mIoU (Tables S3/S4).", ""]
    return lines


def _random_twins(paper, runs):
    """(entropy config, random config) pairs with runs of both: the paper's random baselines and
    any `<name>_random` run beside a `<name>` run (e.g. the CamVid validation configs)."""
    pairs = {(b["entropy_twin"], b["config"]) for b in paper["random_baselines"].values()}
    pairs |= {(name[: -len("_random")], name) for name in runs if name.endswith("_random")}
    return sorted((e, r) for e, r in pairs if e in runs and r in runs)


def _revealed(run):
    """Class pixels summed over the run's query stages, and the pool's after the last one
    (None, None when its summary does not record them)."""
    stages = [s for s in run.stages if "queried_class_pixels" in s]
    if not stages:
        return None, None
    total = {}
    for stage in stages:
        for name, count in stage["queried_class_pixels"].items():
            total[name] = total.get(name, 0) + count
    return total, stages[-1]["pool_class_pixels"]


def _shares(counts, names):
    """Each name's share (%) of all pixels counted, None when nothing was counted."""
    total = sum(counts.values())
    return [100.0 * counts.get(n, 0) / total if total else None for n in names]


def _query_classes_section(paper, runs, runs_dir):
    """What the queries pick: the class distribution of the revealed pixels, entropy vs random,
    beside the labeled pool's (first run of each config)."""
    lines = []
    for entropy_config, random_config in _random_twins(paper, runs):
        entropy_run, random_run = runs[entropy_config][0], runs[random_config][0]
        (ent, pool), (rnd, _) = _revealed(entropy_run), _revealed(random_run)
        lines += [f"### `{_run_label(entropy_run, runs_dir)}` vs `{_run_label(random_run, runs_dir)}`", ""]
        if ent is None or rnd is None:
            lines += ["Not recorded (a summary without `queried_class_pixels`).", ""]
            continue
        names = list(dict.fromkeys([*pool, *ent, *rnd]))
        header = ["class", "entropy: % of revealed", "random: % of revealed", "entropy - random",
                  "pool after the last query (entropy run), %"]
        columns = [_shares(ent, names), _shares(rnd, names), _shares(pool, names)]
        rows = [[name, number_cell(e), number_cell(r), _diff(e, r), number_cell(p)] for name, e, r, p in zip(names, *columns)]
        lines += _table(header, rows)
        lines += [f"Revealed pixels: {sum(ent.values())} (entropy), {sum(rnd.values())} (random), by the "
                  "labels as revealed (ground truth or the annotator's).", ""]
    if not lines:
        return []
    return ["## What the queries pick — revealed pixels per class, entropy vs random", ""] + lines


def _other_runs_section(paper, runs, runs_dir):
    known = set(paper_config_names(paper))
    rows = []
    for config in sorted(c for c in set(runs) - known if not cpu_proxy.is_cpu_proxy(c)):
        for run in runs[config]:
            last = run.stages[-1] if run.stages else None
            rows.append([_run_label(run, runs_dir), run.status(),
                         number_cell(run.final_miou) if run.finished else DASH,
                         number_cell(last["labeled_pixel_pct"]) if last else DASH,
                         len(run.stages), _duration(run.wall_time_s), run.device])
    if not rows:
        return []
    header = ["config", "status", "final mIoU", "labeled %", "stages", "wall time", "device"]
    return ["## Other runs (no paper number)", ""] + _table(header, rows)


def build_report(paper, runs, runs_dir, plot_note=None):
    """The whole Markdown report as one string."""
    count = sum(len(found) for found in runs.values())
    lines = ["# S4AL+: our runs next to the paper", "",
             f"Runs directory: `{runs_dir}` ({count} run(s) found). "
             "Difference = ours - paper; mIoU, IoU and labeled % are percentages; "
             "'unfinished (stage k/n)' = k of n stages done.", ""]
    lines += _table1_section(paper, runs, runs_dir)
    lines += cpu_proxy.section_lines(paper, runs, paper["al_metric"]["fraction_of_supervised"])
    lines += _equal_and_supervised_section(paper, runs, runs_dir)
    lines += _al_metric_section(paper, runs, runs_dir)
    lines += _query_classes_section(paper, runs, runs_dir)
    lines += _table_s1_section(paper, runs, runs_dir)
    lines += _table_s2_section(paper, runs, runs_dir)
    lines += _section5_section(paper, runs, runs_dir)
    lines += _per_class_section(paper, "tableS3", runs, runs_dir)
    lines += _per_class_section(paper, "tableS4", runs, runs_dir)
    lines += _other_runs_section(paper, runs, runs_dir)
    if plot_note is not None:
        path, skipped = plot_note[:2]
        lines.append(f"Fig. 3-like plot: `{path}`.")
        if len(plot_note) == 3:
            lines.append(f"CPU-scale proxy's plot: `{plot_note[2]}`.")
        if skipped:
            lines.append("Not plotted (dataset not in the config name): "
                         + ", ".join(f"`{name}`" for name in skipped) + ".")
        lines.append("")
    return "\n".join(lines)


def labelled_curves(runs, folder: Path) -> str:
    """One mIoU-vs-labelled-% chart per run of any data set (the random-query twin `<config>_random`
    beside it when there is one), and the report section that lists them."""
    from engine.figures import labelled_curve
    from core.io import atomic_write_png
    lines = []
    for name in sorted(runs):
        if name.endswith("_random") and name[:-len("_random")] in runs:
            continue  # drawn beside its entropy twin
        for run in runs[name]:
            series = {name: run.curve}
            for twin in runs.get(f"{name}_random", [])[:1]:
                series[f"{name}_random (same budget, random regions)"] = twin.curve
            path = folder / (name.replace("/", "__") + ("" if len(runs[name]) == 1 else f"__{run.run_dir.name}") + ".png")
            atomic_write_png(path, labelled_curve(series, f"{name}: mIoU vs labelled pixels"))
            lines.append(f"- `{name}` ({run.run_dir}): [{path}]({path})")
    return ("\n\n## mIoU against labelled pixels, per run\n\n" + "\n".join(lines) + "\n") if lines else ""


def summarize(runs_dir, paper_path=DEFAULT_PAPER_RESULTS, plot_path=None):
    """Build the report text (and write the plot when plot_path is given)."""
    paper = load_paper_results(paper_path)
    skipped = []
    runs = load_runs(runs_dir, skipped)
    for path, why in skipped:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    plot_note = None
    if plot_path is not None:
        from experiments.plot import plot_fig3  # matplotlib is optional: only needed here
        plot_note = (plot_path, plot_fig3(runs, paper, plot_path))
        if any(cpu_proxy.is_cpu_proxy(name) for name in runs):
            cpu_plot = Path(plot_path).with_name(Path(plot_path).stem + "_cpu.png")
            cpu_proxy.plot_cpu_proxy(paper, runs, cpu_plot)
            plot_note = (plot_path, plot_note[1], cpu_plot)
    report = build_report(paper, runs, runs_dir, plot_note)
    if plot_path is not None:
        report += labelled_curves(runs, Path(plot_path).parent / "curves")
    if skipped:
        report += "\n\n## Skipped runs (unreadable summary.json)\n\n" + "\n".join(
            f"- `{path}`: {why}" for path, why in skipped) + "\n"
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description="Summarise runs next to the paper's numbers.")
    parser.add_argument("runs_dir", nargs="?", default="runs")
    parser.add_argument("--out", default=str(EXPERIMENTS_DIR / "report.md"),
                        help="where to write the Markdown report")
    parser.add_argument("--plot", default=str(EXPERIMENTS_DIR / "fig3.png"),
                        help="where to write the Fig. 3-like PNG (needs matplotlib)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    parser.add_argument("--paper", default=str(DEFAULT_PAPER_RESULTS), help="paper numbers (YAML)")
    args = parser.parse_args(argv)
    try:
        text = summarize(args.runs_dir, args.paper, None if args.no_plot else args.plot)
    except (ValueError, OSError) as err:  # no runs folder, a bad paper-results file: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    atomic_write_text(out, text)  # like every file the project writes
    print(text)
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
