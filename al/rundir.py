"""The run directory: its layout, the config it was made with, and the records of its stages.

runs/<config name>/
    config.yaml            resolved config (a different config here is refused without --overwrite)
    log.txt, tensorboard/  logs
    data_check.npz         per-cell valid-pixel counts of the training pool (from the one full scan)
    NN_<stage>/            one folder per stage: checkpoints/, pseudo/, weights.pth, pool.npz, metrics.json
    summary.json           what experiments/summarize.py reads
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from core import distributed as dist_utils
from core.config import ConfigError, save_config
from core.schema import with_new_defaults
from core.errors import InputError
from core.io import atomic_write_json, read_json, remove_stale_temporaries, writable_folder

# Keys that change how a run is executed, not what it computes: resuming with other values is fine.
_EXECUTION_ONLY = {("data", "workers"), ("runtime", "log_every"), ("runtime", "checkpoint_every"),
                   ("runtime", "checkpoint_minutes"),
                   ("runtime", "dist_timeout_minutes"), ("data", "cache_dir"), ("eval", "window_batch")}


def interrupted_message(run_root: Path) -> str:
    """One line for Ctrl-C: which checkpoint the same command resumes from."""
    from core.checkpoint import step_checkpoints
    newest = None
    for folder in sorted(Path(run_root).glob("[0-9][0-9]_*/checkpoints")):
        found = step_checkpoints(folder)
        if found:
            newest = (folder.parent.name, *max(found))
    if newest is None:
        return (f"interrupted: run the same command again to go on from the last finished stage in {run_root} "
                f"(no step checkpoint of the stage in progress yet)")
    stage, step, path = newest
    return f"interrupted: run the same command again to resume {stage} from {path} (step {step})"


def comparable_config(cfg_dict: dict) -> dict:
    """The config without the execution-only keys (they may differ between runs that share results)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg_dict.items()}
    out.pop("output_dir", None)  # where the run lives: a run directory moved elsewhere still resumes
    for section, key in _EXECUTION_ONLY:
        out.get(section, {}).pop(key, None)
    return out


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    diffs = []
    for k in keys:
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            diffs.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return diffs


def grows(previous: dict, current: dict) -> bool:
    """Whether config `current` is `previous` with stages added at the end (every earlier stage
    unchanged, in the same order): its finished stages stay valid, so the run continues."""
    before, after = previous.get("stages") or {}, current.get("stages") or {}
    return len(after) > len(before) and list(after.items())[:len(before)] == list(before.items())


def _read_saved_config(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    if not isinstance(saved, dict):
        raise ValueError(f"expected a mapping, got {type(saved).__name__}")
    return saved


def check_output_dir(cfg, overwrite: bool) -> None:
    """Refuse (before anything is written) a directory of another run or one we cannot write."""
    from al import guard
    root = Path(cfg.output_dir)
    saved = root / "config.yaml"
    if overwrite:
        guard.check_overwrite(root, cfg)  # only a run directory of this project, never data or configs
    if root.exists() and not overwrite:
        if root.is_dir() and saved.is_file():
            previous = guard.read_record(saved, _read_saved_config, lambda: f"restore it, or {guard.describe_overwrite(root)}")
            previous, current = comparable_config(with_new_defaults(previous)), comparable_config(cfg.to_dict())
            if grows(previous, current):  # a campaign with more query cycles continues in place
                previous, current = {**previous, "stages": None}, {**current, "stages": None}
            diffs = _differences(previous, current)
            if diffs:
                raise ConfigError(f"output_dir {root} holds a run with a different config "
                                  f"({'; '.join(diffs[:5])}); choose another output_dir, or "
                                  f"{guard.describe_overwrite(root)}")
        elif root.is_dir() and any(root.iterdir()):
            raise ConfigError(f"output_dir {root} exists, is not empty and has no config.yaml, so it is not a "
                              f"run directory; refusing to write into it (choose another output_dir)")
    try:
        writable_folder(root)
    except InputError as err:
        raise ConfigError(f"output_dir {err}") from None


class RunDirectory:
    def __init__(self, cfg, ctx, overwrite: bool):
        self.root = Path(cfg.output_dir)
        self.ctx = ctx
        from al import guard
        moved = None
        if ctx.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
        guard.lock(self.root, ctx)  # no-op when start() took it already
        if ctx.is_main:
            if overwrite:
                moved = guard.clear_run(self.root)  # checked as a run directory before anything was written
            remove_stale_temporaries(self.root)
            save_config(cfg, self.root / "config.yaml")
            if moved is not None:
                print(f"--overwrite: the annotator's label files of the old run are in {moved}")
        dist_utils.barrier(ctx)

    @staticmethod
    def stage_folder(index: int, name: str) -> str:
        return f"{index:02d}_{name}"

    def stage_dir(self, index: int, name: str) -> Path:
        return self.root / self.stage_folder(index, name)

    @staticmethod
    def stage_done(stage_dir: Path) -> bool:
        # metrics.json is the last file a stage writes: its presence means the stage is complete.
        return (stage_dir / "metrics.json").is_file()

    def write_summary(self, cfg, stage_records: list[dict], classes, device: str, finished: bool,
                      num_stages: int, waiting: dict | None = None) -> None:
        """`state`: "finished", "running" (stages still to run; also a killed run), or
        "waiting_for_labels" (`waiting` then says which stage and where its manifest is)."""
        if self.ctx.is_main:
            state = "finished" if finished else "waiting_for_labels" if waiting else "running"
            atomic_write_json(self.root / "summary.json", {
                "config": cfg.name, "state": state, "finished": finished, "num_stages": num_stages,
                **({"waiting": waiting} if waiting else {}), "device": device,
                "world_size": self.ctx.world_size, "classes": list(classes), "stages": stage_records})


def describe_device(ctx) -> str:
    import platform
    import torch
    if ctx.device.type == "cuda":
        return f"{torch.cuda.get_device_name(ctx.device)} x{ctx.world_size}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # /proc/cpuinfo is Linux-only; the platform string is the description then
    return f"CPU {cpu} ({os.cpu_count()} cores) x{ctx.world_size}"


def stage_record(name: str, stage, metrics: dict, labeled_pct: float, wall_time: float,
                 evals: list[dict] = ()) -> dict:
    """A stage's line in summary.json. `miou` is the FINAL model's (what the next stage starts
    from and what we compare with the paper); `best` is the best of every evaluation of the stage
    (`eval_every` ones and the final one), with its step, for readers who report best-of-run."""
    total = stage.epochs * stage.iters_per_epoch
    best = max([*evals, {"step": total, "miou": metrics["miou"]}], key=lambda e: e["miou"])
    return {"name": name, "kind": stage.kind, "epochs": stage.epochs, "labeled_pixel_pct": labeled_pct,
            "miou": metrics["miou"], "per_class_iou": metrics["per_class_iou"], "wall_time_s": wall_time,
            "best": {"miou": best["miou"], "step": best["step"], "of_steps": total}}


# {class name or "void": pixels}, and with a human oracle what the import took (oracle.import_record)
QUERY_STATS = ("queried_class_pixels", "pool_class_pixels", "human_import")


def with_query_stats(record: dict, metrics: dict) -> dict:
    """A query stage's record also carries what its query revealed, per class (kept beside the
    record in metrics.json: `metrics` is that file's content, or what it is written from)."""
    return {**record, **{key: metrics[key] for key in QUERY_STATS if key in metrics}}


def read_stage_record(stage_dir: Path) -> dict:
    metrics = read_json(stage_dir / "metrics.json")
    return with_query_stats(metrics["record"], metrics)
