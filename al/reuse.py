"""`init_from`: the finished leading stages another run computed with the same setup are copied
instead of recomputed (the paper's rows share their teacher and student)."""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from al.rundir import RunDirectory, comparable_config
from core.config import ConfigError, load_config
from core.schema import with_new_defaults
from core.io import atomic_folder

def _without(cfg_dict: dict, keys) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in keys}


# Query settings that only matter once a query stage runs: a run whose shared prefix has no
# query stage may reuse it even if these differ (e.g. the random-query baseline).
_QUERY_ONLY = ("strategy", "selection", "regions_per_image", "budget_pct", "vis_images", "oracle", "mc_passes")


def reusable_stages(cfg, overrides=()) -> tuple[Path | None, list[str]]:
    """(run directory of the `init_from` run, names of this config's leading stages it has with
    an identical setup), judged against what that run really was: its saved config.yaml.

    The command line's overrides (except output_dir, init_from, init_from_dir) only help find
    the init_from config's output_dir; whether a stage is the same is decided by the saved file
    alone, so `init_from=X query.oracle=human` never reuses X's ground-truth query stages. A run
    directory without config.yaml (not run yet) shares nothing."""
    if not cfg.init_from:
        return None, []
    source_dir = Path(cfg.init_from_dir) if cfg.init_from_dir else _init_from_output_dir(cfg, overrides)
    saved = source_dir / "config.yaml"
    if not saved.is_file():
        return source_dir, []
    try:
        theirs = yaml.safe_load(saved.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"init_from: {saved}: not a readable config ({err})") from None
    if not isinstance(theirs, dict) or not isinstance(theirs.get("stages"), dict):
        raise ConfigError(f"init_from: {saved}: not a run's saved config (no 'stages' mapping)")
    return source_dir, shared_stages(cfg.to_dict(), with_new_defaults(theirs), source_dir)


def _init_from_output_dir(cfg, overrides) -> Path:
    shared_overrides = [o for o in overrides
                        if not o.strip().startswith(("output_dir=", "init_from=", "init_from_dir="))]
    try:
        return Path(load_config(cfg.init_from, shared_overrides).output_dir)
    except ConfigError as err:
        raise ConfigError(f"init_from: {err}") from None


_NOT_A_DEPENDENCY = ("stages", "output_dir", "init_from", "init_from_dir", "name")


def shared_stages(ours: dict, theirs: dict, source_dir: Path) -> list[str]:
    """Leading stages of config `ours` that the run of saved config `theirs` (in `source_dir`)
    computed the same way, compared stage by stage:
      - everything outside `stages` that any stage depends on (data, model, seed, losses, ...)
        must be equal, or nothing is shared;
      - each stage's definition, name and position must be equal;
      - a query stage also depends on every query setting, the oracle included, and, with a
        human oracle, on the labels the person gave (the source stage's human_labels/, copied
        along when it is reused): a finished human query stage without them is not reused."""
    def setup(c):
        d = _without(comparable_config(c), _NOT_A_DEPENDENCY)  # execution-only keys may differ
        d["query"] = _without(d.get("query", {}), _QUERY_ONLY)
        return d

    if setup(theirs) != setup(ours):
        return []
    shared = []
    for index, ((a, sa), (b, sb)) in enumerate(zip(ours["stages"].items(), theirs["stages"].items())):
        if a != b or sa != sb:
            break
        if sa.get("kind") == "query":
            if ours["query"] != theirs.get("query"):
                break  # stages before the first query did not use the query settings; this one does
            folder = source_dir / RunDirectory.stage_folder(index, a)
            if (ours["query"].get("oracle") == "human" and RunDirectory.stage_done(folder)
                    and not (folder / "human_labels").is_dir()):
                break
        shared.append(a)
    return shared


def copy_finished_stage(src_dir: Path, dst_dir: Path) -> None:
    """Copy a finished stage folder (weights, pool, metrics — not the pseudo-label PNGs) into place
    atomically: into a temporary sibling `NN_stage.copying` first (al/guard.py knows the name), then
    renamed over whatever stands at `dst_dir`."""
    with atomic_folder(dst_dir, temporary=f"{dst_dir.name}.copying", replace=True) as tmp:
        for f in src_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
