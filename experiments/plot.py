"""Fig. 3 of the paper, redrawn from runs: mIoU against labeled pixel %, one subplot per dataset.

Every active-learning run found is a line through its stages' (labeled %, mIoU) points; the
random-query baselines (config names ending in ``_random``) are dashed with square markers so
they stand apart from the entropy runs. The paper's Table 1 rows are black stars, the paper's
supervised (100%) mIoU a dotted line and ours (when a supervised run finished) a dashed one.
matplotlib is only needed here, so it is imported inside the function.
"""
from pathlib import Path

from core.io import atomic_path
from experiments.cpu_proxy import is_cpu_proxy
from experiments.run_summaries import DATASETS, dataset_of, is_active_learning_run


def _import_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError("the Fig. 3 plot needs matplotlib (pip install matplotlib), "
                          "or run summarize.py with --no-plot") from err
    # The object-oriented API with an Agg canvas draws without touching pyplot's global state
    # or needing a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    return Figure, FigureCanvasAgg


def _run_name(run):
    return run.config if run.run_dir.name == Path(run.config).name else \
        f"{run.config} ({run.run_dir.name})"


def plot_fig3(runs, paper, out_path):
    """Write the PNG to out_path; returns the AL runs not plotted (no dataset in their name).

    runs: {config: [Run, ...]} as from run_summaries.load_runs; paper: load_paper_results().
    """
    Figure, FigureCanvasAgg = _import_matplotlib()
    figure = Figure(figsize=(6.5 * len(DATASETS), 5.0))
    FigureCanvasAgg(figure)
    # The CPU-scale proxies have their own plot (cpu_proxy.plot_cpu_proxy): another backbone and
    # scale, so not beside the paper's points.
    al_runs = [run for found in runs.values() for run in found
               if is_active_learning_run(run) and not is_cpu_proxy(run.config)]
    for index, dataset in enumerate(DATASETS):
        axes = figure.add_subplot(1, len(DATASETS), index + 1)
        for run in al_runs:
            if dataset_of(run.config) != dataset or not run.stages:
                continue
            random_query = run.config.endswith("_random")
            xs, ys = zip(*run.curve)
            label = _run_name(run) + ("" if run.finished else f" [{run.status()}]")
            axes.plot(xs, ys, linestyle="--" if random_query else "-",
                      marker="s" if random_query else "o", markersize=4, linewidth=1.2,
                      alpha=0.85, label=label)
        rows = paper["table1"][dataset]
        axes.plot([r["labeled_pct"] for r in rows], [r["miou"] for r in rows], linestyle="none",
                  marker="*", markersize=10, color="black", label="paper, Table 1 rows")
        spec = paper["al_metric"][dataset]
        axes.axhline(spec["paper_supervised_miou"], color="gray", linestyle=":",
                     label=f"paper supervised 100% ({spec['paper_supervised_miou']:.2f})")
        for sup in runs.get(spec["supervised_config"], []):
            if sup.finished:
                axes.axhline(sup.final_miou, color="tab:red", linestyle="--", linewidth=1.0,
                             label=f"ours supervised 100% ({sup.final_miou:.2f})")
        axes.set_title({"camvid": "(a) CamVid", "cityscapes": "(b) Cityscapes"}[dataset])
        axes.set_xlabel("labeled pixels (%)")
        axes.set_ylabel("mIoU (%)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=6, loc="lower right")
    skipped = sorted({run.config for run in al_runs if dataset_of(run.config) is None})
    save_figure(figure, out_path)
    return skipped


def save_figure(figure, out_path) -> None:
    figure.tight_layout()
    with atomic_path(out_path) as tmp:  # a reader never sees half a PNG
        figure.savefig(tmp, format="png", dpi=120)
