"""The CPU-scale proxy's report: seeds are grouped by run directory, the verdict rule is the one
its docstring states (checked on hand-made numbers), and variant runs are kept apart."""
from pathlib import Path

from experiments import cpu_proxy
from experiments.run_summaries import Run, load_paper_results


def _run(config, run_dir, mious, pcts=None, finished=True):
    pcts = pcts or [10.0] * len(mious)
    stages = [{"name": f"s{i}", "kind": "supervised", "epochs": 10, "labeled_pixel_pct": p, "miou": m,
               "per_class_iou": {}, "wall_time_s": 60.0 * (i + 1)} for i, (m, p) in enumerate(zip(mious, pcts))]
    return Run(config=config, run_dir=Path("runs") / run_dir, finished=finished, device="cpu", stages=stages)


def _runs(*runs):
    found = {}
    for run in runs:
        found.setdefault(run.config, []).append(run)
    return found


def test_verdict_follows_the_stated_rule():
    a = cpu_proxy.Seeds([_run("x", "x", [40.0]), _run("x", "x_seed1", [41.0])])        # spread 1.0
    b = cpu_proxy.Seeds([_run("y", "y", [42.0]), _run("y", "y_seed1", [42.4])])        # spread 0.4
    assert cpu_proxy.verdict(a, b).startswith("supports: +1.70")                       # 1.7 > 1.0
    assert cpu_proxy.verdict(b, a).startswith("contradicts: -1.70")
    c = cpu_proxy.Seeds([_run("z", "z", [40.2]), _run("z", "z_seed1", [41.4])])        # mean 40.8
    assert cpu_proxy.verdict(a, c).startswith("not resolved: +0.30 is inside the seed spread 1.20")
    d = cpu_proxy.Seeds([_run("d", "d", [41.0]), _run("d", "d_seed1", [41.2])])        # spread 0.2
    assert cpu_proxy.verdict(a, d).startswith("not resolved: +0.60")                   # the wider spread counts
    assert cpu_proxy.verdict(a, b).endswith("; per seed: +2.00 (seed 0), +1.40 (seed 1)")  # 42-40, 42.4-41
    three = cpu_proxy.Seeds([_run("t", "t_seed1", [43.0]), _run("t", "t", [41.5]), _run("t", "t_seed2", [44.0])])
    assert cpu_proxy.verdict(a, three).endswith("; per seed: +1.50 (seed 0), +2.00 (seed 1)")  # seed 2: no pair
    one = cpu_proxy.Seeds([_run("w", "w", [45.0])])
    assert cpu_proxy.verdict(a, one) == "cannot tell (1 seed): +5.00"  # 45 - 40, seed 0's (not the mean 40.5)
    assert cpu_proxy.verdict(one, a) == "cannot tell (1 seed): -5.00"
    only_seed1 = cpu_proxy.Seeds([_run("v", "v_seed1", [44.0])])
    assert cpu_proxy.verdict(a, only_seed1) == "cannot tell (1 seed): +3.00"  # 44 - 41, seed 1's
    assert cpu_proxy.verdict(one, only_seed1) == "cannot tell (1 seed): -1.00"  # no seed in common: the means
    assert cpu_proxy.verdict(a, cpu_proxy.Seeds([])) == "cannot tell (not run)"


def test_seeds_are_the_config_dir_and_its_seed_dirs_only():
    runs = _runs(_run("cpu/camvid/row1", "cpu/camvid/row1", [38.0]),
                 _run("cpu/camvid/row1", "cpu/camvid/row1_seed1", [40.0]),
                 _run("cpu/camvid/row1", "cpu/camvid/row1_scratch", [20.0]),
                 _run("cpu/camvid/row1", "cpu/camvid/row1_seed2", [50.0], finished=False))
    seeds = cpu_proxy.Seeds(cpu_proxy.seed_runs(runs, "cpu/camvid/row1"))
    assert seeds.mious == [38.0, 40.0] and seeds.mean == 39.0 and seeds.spread == 2.0
    assert "39.00 ± 1.00 (2 seeds: 38.00, 40.00)" == seeds.cell()
    assert cpu_proxy.scratch_lines(runs) == [
        "ImageNet weights against none, row 1 (seed 0, same steps): 38.00 from EfficientNet-Lite0's "
        "ImageNet weights, 20.00 from scratch (+18.00).", ""]


def test_table_puts_our_change_beside_the_papers():
    paper = load_paper_results()
    runs = _runs(_run("cpu/camvid/row1", "cpu/camvid/row1", [38.0]),
                 _run("cpu/camvid/row2", "cpu/camvid/row2", [39.5]),
                 _run("cpu/camvid/row4", "cpu/camvid/row4", [39.5, 41.0]))
    lines = cpu_proxy.table_lines(paper, runs)
    row2 = next(line for line in lines if line.startswith("| `cpu/camvid/row2`"))
    cells = [c.strip() for c in row2.strip("|").split("|")]
    # ours 39.50, change vs row 1 +1.50; paper 60.11, change vs paper row 1 (58.42) +1.69
    assert cells[1:5] == ["39.50 (1 seed)", "+1.50", "60.11", "+1.69"]
    row4 = next(line for line in lines if line.startswith("| `cpu/camvid/row4`"))
    cells = [c.strip() for c in row4.strip("|").split("|")]
    assert cells[2] == "+1.50" and cells[4] == "+0.81"      # both against row 2 (41.00 - 39.50; 60.92 - 60.11)
    assert cells[6] == "s1: 2.0 min"                         # the row's own (last) stage
    runs = _runs(_run("cpu/camvid/row2", "cpu/camvid/row2", [42.0]), _run("cpu/camvid/row2", "cpu/camvid/row2_seed1", [40.0]),
                 _run("cpu/camvid/row3", "cpu/camvid/row3", [43.0]))
    row3 = next(line for line in cpu_proxy.table_lines(paper, runs) if line.startswith("| `cpu/camvid/row3`"))
    assert [c.strip() for c in row3.strip("|").split("|")][2] == "+1.00"  # 43 - 42 (seed 0), not 43 - 41 (the mean)


def test_95_percent_check_uses_our_supervised_run():
    paper = load_paper_results()
    runs = _runs(_run("cpu/camvid/supervised_full", "cpu/camvid/supervised_full", [50.0], [100.0]),
                 _run("cpu/camvid/row6", "cpu/camvid/row6", [44.0, 46.0, 47.6], [10.0, 10.0, 11.95]))
    lines = cpu_proxy.target_lines(paper, runs, 0.95)
    assert lines[0] == "95% of our supervised 100% mean (50.00) = 47.50 mIoU:"
    assert "- `row6` (cpu/camvid/row6): reached at 11.95% labeled" in lines
    runs["cpu/camvid/row6"][0].stages[-1]["miou"] = 47.4
    assert "- `row6` (cpu/camvid/row6): not reached (best 47.40 at 11.95% labeled)" in \
        cpu_proxy.target_lines(paper, runs, 0.95)
