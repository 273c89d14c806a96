"""YAML configs with `_base_` inheritance, `key.sub=value` overrides and a strict schema.

A config file may name one or more `_base_` files (paths relative to itself). Bases are merged
in order, then the file itself on top: dictionaries merge key by key, everything else
(numbers, strings, lists) is replaced. Command-line overrides (`optim.lr=0.02`,
`stages.final.epochs=150`) are parsed as YAML values and applied last.

The resolved config is checked against core/schema.py's SCHEMA: an unknown key, a missing required key,
a value of the wrong type or outside its choices is a ConfigError that names the key and the
file it came from. Nothing is coerced silently except int -> float.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

from core.config_limits import check_ranges
from core.errors import ConfigError  # noqa: F401 (re-exported: callers catch core.config.ConfigError)
from core.schema import BACKBONE_NOISE, SCHEMA, STAGE_SCHEMA
from core.labels import check_classes, check_palette, folder_lut

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


# --------------------------------------------------------------------------- YAML loading
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 demands `1.0e-4`)."""


def _mapping_without_duplicates(loader, node, deep=False):
    """A key written twice in one mapping is an error: YAML would keep the last one silently."""
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err}); save the file as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A command-line value, typed as YAML would type it (`0.1` float, `[1, 2]` list, `null`)."""
    return yaml.load(text, Loader=_Loader)


# --------------------------------------------------------------------------- attribute access
class Config(dict):
    """A dict whose keys also read as attributes: cfg.data.root."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    @staticmethod
    def wrap(obj: Any) -> Any:
        if isinstance(obj, dict):
            return Config({k: Config.wrap(v) for k, v in obj.items()})
        if isinstance(obj, list):
            return [Config.wrap(v) for v in obj]
        return obj

    def to_dict(self) -> dict:
        def plain(o):
            if isinstance(o, dict):
                return {k: plain(v) for k, v in o.items()}
            if isinstance(o, list):
                return [plain(v) for v in o]
            return o
        return plain(self)


# --------------------------------------------------------------------------- merge + origins
def _merge(base: dict, top: dict, origins: dict, source: str, prefix: str = "") -> dict:
    """Deep-merge `top` into a copy of `base`; record which file set each key."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origins, source, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
            origins[dotted] = source
            if isinstance(value, dict):
                _record(value, origins, source, dotted + ".")
    return out


def _record(tree: dict, origins: dict, source: str, prefix: str) -> None:
    for key, value in tree.items():
        origins[f"{prefix}{key}"] = source
        if isinstance(value, dict):
            _record(value, origins, source, f"{prefix}{key}.")


def _load_with_bases(path: Path, origins: dict, chain: tuple = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: _base_ cycle through {[str(p) for p in chain]}")
    raw = _read_yaml(path)
    bases = raw.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths")
    merged: dict = {}
    for base in bases:
        base_tree = _load_with_bases(path.parent / base, origins, chain + (path,))
        merged = _merge(merged, base_tree, origins, str(path.parent / base))
    return _merge(merged, raw, origins, _display(path))


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def apply_override(tree: dict, assignment: str, origins: dict) -> None:
    """Apply one `a.b.c=value` to the raw tree (creating nothing the schema does not know)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            # Only `stages.<new name>.x=...` may introduce a mapping; anything else is caught
            # as an unknown key by the schema check below.
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[:i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = parse_value(text)
    origins[key.strip()] = "command line"
    if isinstance(node[parts[-1]], dict):
        _record(node[parts[-1]], origins, "command line", key.strip() + ".")


# --------------------------------------------------------------------------- validation
def _validate(tree: dict, schema: dict, origins: dict, prefix: str = "") -> dict:
    out = {}
    for key in tree:
        if key not in schema:
            dotted = f"{prefix}{key}"
            raise ConfigError(f"unknown key {dotted} (from {origins.get(dotted, '?')}); "
                              f"known keys here: {sorted(schema)}")
    for key, spec in schema.items():
        dotted = f"{prefix}{key}"
        origin = origins.get(dotted, "defaults")
        if spec == "STAGES":
            out[key] = _validate_stages(tree.get(key, {}), tree.get("stage_defaults", {}), origins)
        elif isinstance(spec, dict):
            sub = tree.get(key, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{dotted} (from {origin}): expected a mapping, got {sub!r}")
            out[key] = _validate(sub, spec, origins, dotted + ".")
        elif key in tree:
            out[key] = spec.check(tree[key], dotted, origin)
        elif spec.required:
            raise ConfigError(f"missing required key {dotted} (config: {origins.get('__file__', '?')})")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def _validate_stages(stages: Any, defaults: Any, origins: dict) -> dict:
    if not isinstance(stages, dict):
        raise ConfigError(f"stages (from {origins.get('stages', '?')}): expected a mapping name -> stage")
    out = {}
    for name, stage in stages.items():
        if stage is None:  # `stages.x: null` in a derived config removes an inherited stage
            continue
        if not isinstance(stage, dict):
            raise ConfigError(f"stages.{name} (from {origins.get(f'stages.{name}', '?')}): expected a mapping")
        filled = {**(defaults if isinstance(defaults, dict) else {}), **stage}
        out[name] = _validate(filled, STAGE_SCHEMA, origins, f"stages.{name}.")
    return out


# --------------------------------------------------------------------------- public API
def resolve_config_path(name_or_path: str) -> tuple[Path, str]:
    """`table1/camvid/row1` or a path -> (file, config name). The name is the path under configs/."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith((".yaml", ".yml")):
        candidates.append(CONFIG_DIR / f"{name_or_path}.yaml")
    else:
        candidates.append(CONFIG_DIR / name_or_path)
    for path in candidates:
        if path.is_file():
            path = path.resolve()
            try:
                name = path.relative_to(CONFIG_DIR.resolve()).with_suffix("").as_posix()
            except ValueError:
                name = path.stem
            return path, name
    raise ConfigError(f"config {name_or_path!r} not found (looked for {', '.join(str(c) for c in candidates)})")


def read_with_bases(path: str | os.PathLike) -> dict:
    """A config file's tree after `_base_` inheritance (the rule above), before overrides and the
    schema check: for tools that read a key of many configs without loading them (reproduce.py)."""
    return _load_with_bases(Path(path), {})


def load_config(name_or_path: str, overrides: list[str] = ()) -> Config:
    """Read, merge, override and validate a config. Adds `name` (the config name)."""
    path, name = resolve_config_path(name_or_path)
    origins: dict = {"__file__": _display(path)}
    tree = _load_with_bases(path, origins)
    for assignment in overrides:
        apply_override(tree, assignment, origins)
    cfg = _validate(tree, SCHEMA, origins)
    _check_consistency(cfg, origins)
    if cfg["data"]["workers"] is None:
        cfg["data"]["workers"] = auto_workers()
    if cfg["output_dir"] is None:
        cfg["output_dir"] = os.path.join("runs", name)
    cfg["name"] = name
    return Config.wrap(cfg)


def auto_workers() -> int:
    """`data.workers: null`: the CPU cores this process may use (affinity, and a cgroup CPU
    quota when a container sets one), shared by the LOCAL_WORLD_SIZE ranks torchrun starts on
    this node; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """Whole CPUs allowed by a cgroup v2 quota ("200000 100000" -> 2), None when unlimited.
    Containers often see every core of the host in their affinity mask but may use only this."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None  # no cgroup v2 quota file: nothing limits us beyond the affinity mask
    if quota == "max":
        return None
    return max(1, int(quota) // int(period))


def _check_consistency(cfg: dict, origins: dict) -> None:
    """Cross-key checks the per-key schema cannot express."""
    def fail(key, msg):
        raise ConfigError(f"{key} (from {origins.get(key, origins.get('__file__'))}): {msg}")

    check_ranges(cfg, fail)  # values of the right type that the code cannot run

    positive = ["data.workers", "eval.batch_size", "eval.window_batch", "pseudo.batch_size",
                "loss.num_queries", "loss.num_negatives",
                "query.regions_per_image", "runtime.checkpoint_every", "runtime.log_every"]
    for key in positive:
        section, leaf = key.split(".")
        if cfg[section][leaf] is not None and cfg[section][leaf] < (0 if leaf == "workers" else 1):
            fail(key, f"must be positive, got {cfg[section][leaf]}")
    if cfg["runtime"]["checkpoint_minutes"] <= 0:
        fail("runtime.checkpoint_minutes", f"must be positive, got {cfg['runtime']['checkpoint_minutes']}")
    if not 0 < cfg["query"]["initial_fraction"] <= 1:
        fail("query.initial_fraction", "must be in (0, 1]")
    if cfg["query"]["budget_pct"] <= 0:
        fail("query.budget_pct", f"must be positive, got {cfg['query']['budget_pct']}")
    if min(cfg["query"]["region_size"]) < 1:
        fail("query.region_size", "must be at least 1x1")
    _check_strategy(cfg["query"], cfg["model"], fail)
    if not 0 <= cfg["pseudo"]["threshold"] <= 1:
        fail("pseudo.threshold", "must be in [0, 1]")
    for key in ("pseudo.scales", "eval.scales"):
        section, leaf = key.split(".")
        if not cfg[section][leaf] or min(cfg[section][leaf]) <= 0:
            fail(key, "must be a non-empty list of positive scales")
    lo, hi = cfg["data"]["scale_range"]
    if not 0 < lo <= hi:
        fail("data.scale_range", f"need 0 < min <= max, got {[lo, hi]}")
    _check_folder_data(cfg["data"], fail)
    for name, stage in cfg["stages"].items():
        for leaf in ("epochs", "iters_per_epoch", "batch_labeled"):
            if stage[leaf] < 1:
                fail(f"stages.{name}.{leaf}", f"must be at least 1, got {stage[leaf]}")
        if stage["batch_unlabeled"] < 0:
            fail(f"stages.{name}.batch_unlabeled", "must not be negative")
        if stage["batch_labeled"] + stage["batch_unlabeled"] < 2:
            # BatchNorm in ASPP's image-pooling branch sees one value per image in training.
            fail(f"stages.{name}.batch_labeled", "a training batch needs at least 2 images per process")
        if stage["kind"] != "supervised" and stage["batch_unlabeled"] < 1:
            fail(f"stages.{name}.batch_unlabeled", f"a {stage['kind']} stage needs pseudo-labeled images")
    if cfg["stages"] and next(iter(cfg["stages"].values()))["kind"] != "supervised":
        fail("stages", "the first stage must be `supervised` (it trains the first teacher)")


def _check_strategy(query: dict, model: dict, fail) -> None:
    """bald samples the student's noise: it needs two passes at least and a nonzero noise rate."""
    if query["mc_passes"] < 2:
        fail("query.mc_passes", f"must be at least 2 (bald compares noisy passes), got {query['mc_passes']}")
    if query["strategy"] == "bald":
        noise = BACKBONE_NOISE[model["backbone"]]
        if model[noise] <= 0:
            fail("query.strategy", f"bald samples the student's noise, but model.{noise} (the noise of "
                                   f"{model['backbone']}) is {model[noise]}; set it above 0")


def _check_folder_data(data: dict, fail) -> None:
    """The folder dataset's class settings (the same checks its loader makes, reported with the
    file they came from); the fixed datasets refuse them rather than ignore them."""
    if data["dataset"] != "folder":
        for key in ("classes", "label_map", "palette"):
            if data[key] is not None:
                fail(f"data.{key}", f"only for data.dataset=folder ({data['dataset']} defines its own)")
        if data["ignore_index"] != 255:
            fail("data.ignore_index", f"only for data.dataset=folder ({data['dataset']} defines its own)")
        return
    lut_key = "data.ignore_index" if data["label_map"] is None else "data.label_map"
    checks = [("data.classes", lambda: check_classes(data["classes"])),
              (lut_key, lambda: folder_lut(len(data["classes"]), data["ignore_index"], data["label_map"])),
              ("data.palette", lambda: data["palette"] is None or check_palette(data["palette"], len(data["classes"])))]
    for key, check in checks:
        try:
            check()
        except ValueError as err:
            fail(key, str(err).removeprefix(f"{key}: "))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    from core.io import atomic_write_text
    atomic_write_text(path, dump_config(cfg))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
