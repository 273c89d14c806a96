"""Run every config of one paper table in dependency order, then summarise.

    python experiments/reproduce.py TABLE [--nproc 4] [--dry-run] [--seed S] [--only CONFIG ...]
                                    [--configs-dir configs] [--runs-dir runs]
                                    [--overrides key=value ...]

TABLE is one of table1_camvid, table1_cityscapes, tableS1, equal, supervised, cpu_camvid. A config whose
YAML (or one of its ``_base_`` files) sets ``init_from: <config>`` reuses that run's finished
stages, so it runs after it; a dependency outside the table is run first too (a finished run
is not recomputed by the training scripts, so this costs nothing when it is already done).
Each config runs as ``torchrun --nproc_per_node N train_al.py|train_ssl.py --config PATH
[overrides]`` (plain ``python`` when N is 1); the first failure stops everything and its exit
code is returned. ``--dry-run`` prints the commands instead of running them.
"""
import argparse
import shlex
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import read_with_bases  # noqa: E402
from experiments.run_summaries import normalize_config_name  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

TABLE_CONFIGS = {
    "table1_camvid": [f"table1/camvid/row{i}" for i in range(1, 7)]
    + ["table1/camvid/row6_random"],
    "table1_cityscapes": [f"table1/cityscapes/row{i}" for i in range(1, 10)]
    + ["table1/cityscapes/row9_random"],
    "tableS1": ["tableS1/r50_100", "tableS1/r50_372", "tableS1/r50_744", "tableS1/r101d_186",
                "tableS1/r101d_372", "tableS1/r101d_744", "tableS1/r101d_1488"],
    "equal": ["equal/camvid_r50", "equal/cityscapes_r50"],
    "supervised": ["supervised/camvid_full", "supervised/cityscapes_full"],
    # Table 1 (CamVid) at the scale of a 2-core CPU, EfficientNet-Lite0 (configs/cpu/camvid).
    "cpu_camvid": [f"cpu/camvid/row{i}" for i in range(1, 7)]
    + ["cpu/camvid/row6_random", "cpu/camvid/supervised_full"],
}

def config_path(name, configs_dir):
    return Path(configs_dir) / f"{name}.yaml"


def read_init_from(name, configs_dir):
    """The config name this config's run starts from, or None."""
    path = config_path(name, configs_dir)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (config '{name}')")
    value = read_with_bases(path).get("init_from")  # core/config.py's `_base_` rule, as training reads it
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}: 'init_from' must be a config name or null, got {value!r}")
    return normalize_config_name(value)


def order_by_dependencies(names, configs_dir):
    """The configs (plus any init_from dependency outside them) so that each runs after its
    init_from; otherwise the given order is kept. A cycle is an error naming it."""
    parent = {}
    pending = list(names)
    while pending:  # pull in dependencies outside the table, transitively
        name = pending.pop(0)
        if name in parent:
            continue
        parent[name] = read_init_from(name, configs_dir)
        if parent[name] is not None and parent[name] not in parent:
            pending.append(parent[name])
    given_order = list(names) + [n for n in parent if n not in names]
    ordered, visiting = [], []

    def visit(name):
        if name in ordered:
            return
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise ValueError(f"init_from cycle: {cycle} (in {configs_dir})")
        visiting.append(name)
        if parent[name] is not None:
            visit(parent[name])
        visiting.pop()
        ordered.append(name)

    for name in given_order:
        visit(name)
    return ordered


def train_script_for(name):
    # Table S1 rows are fixed-split semi-supervised runs; everything else is active learning.
    return "train_ssl.py" if name.startswith("tableS1/") else "train_al.py"


def _display_path(path):
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def build_commands(table, configs_dir, nproc=4, overrides=(), seed=None, only=None):
    """[(config name, argv)] for the table (or its configs named in `only`, plus what they
    init_from), in dependency order."""
    if table not in TABLE_CONFIGS:
        raise ValueError(f"unknown table '{table}'; choose one of {sorted(TABLE_CONFIGS)}")
    names = TABLE_CONFIGS[table]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"--only: {', '.join(unknown)} not in table '{table}' ({', '.join(names)})")
        names = [n for n in names if n in only]
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
    commands = []
    for name in order_by_dependencies(names, configs_dir):
        launcher = (["python"] if nproc == 1 else
                    ["torchrun", "--nproc_per_node", str(nproc)])
        extra = list(overrides)
        if seed is not None:
            # A second seed of a run lives beside the first, e.g. runs/tableS1/r50_100_seed1,
            # and reuses the stages of its own seed's init_from run, not seed 0's.
            extra += [f"seed={seed}", f"output_dir=runs/{name}_seed{seed}"]
            parent = read_init_from(name, configs_dir)
            if parent is not None:
                extra.append(f"init_from_dir=runs/{parent}_seed{seed}")
        argv = launcher + [train_script_for(name), "--config",
                           _display_path(config_path(name, configs_dir))] + extra
        commands.append((name, argv))
    return commands


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run one paper table's configs, then summarise.")
    parser.add_argument("table", choices=sorted(TABLE_CONFIGS))
    parser.add_argument("--nproc", type=int, default=4, help="GPUs (processes) per run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--seed", type=int, default=None,
                        help="run every config with this seed into runs/<config>_seed<S>")
    parser.add_argument("--only", nargs="+", default=None, metavar="CONFIG",
                        help="run only these configs of the table (and what they init_from)")
    parser.add_argument("--configs-dir", default=str(REPO_ROOT / "configs"))
    parser.add_argument("--runs-dir", default="runs", help="passed to summarize.py")
    parser.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides appended to every command")
    args = parser.parse_args(argv)
    try:
        commands = build_commands(args.table, args.configs_dir, args.nproc, args.overrides,
                                  args.seed, args.only)
    except (ValueError, OSError) as err:  # a bad argument or config file: one line, nothing run
        print(f"error: {err}", file=sys.stderr)
        return 2
    summarize_argv = ["python", "experiments/summarize.py", args.runs_dir]
    if args.dry_run:
        for _, command in commands:
            print(shlex.join(command))
        print(shlex.join(summarize_argv))
        return 0
    for name, command in commands:
        # `python` in the printed command means this interpreter.
        launch = [sys.executable] + command[1:] if command[0] == "python" else command
        print(f"==> {name}: {shlex.join(command)}", flush=True)
        returncode = subprocess.run(launch, cwd=REPO_ROOT).returncode
        if returncode != 0:
            print(f"==> {name} failed with exit code {returncode}; stopping.", file=sys.stderr)
            return returncode
    from experiments.summarize import main as summarize_main
    # The training scripts ran in the repo root, so a relative runs dir is relative to it.
    return summarize_main([str(REPO_ROOT / args.runs_dir)])


if __name__ == "__main__":
    sys.exit(main())
