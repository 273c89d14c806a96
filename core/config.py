"""YAML configs with `_base_` inheritance, `key.sub=value` overrides and a strict schema.

A config file may name one or more `_base_` files (paths relative to itself). Bases are merged
in order, then the file itself on top: dictionaries merge key by key, everything else
(numbers, strings, lists) is replaced. Command-line overrides (`optim.lr=0.02`,
`stages.final.epochs=150`) are parsed as YAML values and applied last.

The resolved config is checked against SCHEMA below: an unknown key, a missing required key,
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
from core.labels import check_classes, check_palette, folder_lut

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the file."""


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


# --------------------------------------------------------------------------- schema
class Field:
    """One leaf of the schema: its type(s), default, and whether it must be given."""

    def __init__(self, kind: str, default: Any = None, *, required: bool = False,
                 choices: tuple | None = None, nullable: bool = False, doc: str = ""):
        self.kind, self.default, self.required = kind, default, required
        self.choices, self.nullable, self.doc = choices, nullable, doc

    def check(self, value: Any, key: str, origin: str) -> Any:
        where = f"{key} (from {origin})"
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{where}: must not be null")
        value = _check_kind(self.kind, value, where)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(self.choices)}")
        return value


def _check_kind(kind: str, value: Any, where: str) -> Any:
    scalar = {"int": int, "float": (int, float), "bool": bool, "str": str}
    if kind in scalar:
        ok = isinstance(value, scalar[kind]) and not (kind in ("int", "float") and isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{where}: expected {kind}, got {type(value).__name__} {value!r}")
        return float(value) if kind == "float" else value
    m = re.fullmatch(r"(int|float|str)(\d*)list|(int|float)(\d)", kind)
    if m:  # "int2" = list of exactly 2 ints, "floatlist" = list of any length
        elem = m.group(1) or m.group(3)
        length = int(m.group(4) or m.group(2) or 0) or None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {elem}, got {type(value).__name__} {value!r}")
        if length is not None and len(value) != length:
            raise ConfigError(f"{where}: expected {length} values, got {len(value)}")
        return [_check_kind(elem, v, where) for v in value]
    if kind == "intmap":  # {raw int: int}, e.g. data.label_map
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of int -> int, got {type(value).__name__} {value!r}")
        return {_check_kind("int", k, f"{where} key"): _check_kind("int", v, f"{where} [{k!r}]")
                for k, v in value.items()}
    if kind == "rgblist":  # [[r, g, b], ...], each 0..255, e.g. data.palette
        colours = [_check_kind("int3", v, f"{where} entry {i}")
                   for i, v in enumerate(_check_kind_list(value, where))]
        bad = [c for c in colours if not all(0 <= x <= 255 for x in c)]
        if bad:
            raise ConfigError(f"{where}: colour values must be in 0..255, got {bad[0]}")
        return colours
    raise AssertionError(f"unknown schema kind {kind}")


def _check_kind_list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    return list(value)


STAGE_KINDS = ("supervised", "self_train", "query")

# Per-stage settings; `stage_defaults` holds the same keys and fills whatever a stage omits.
STAGE_SCHEMA = {
    "kind": Field("str", required=True, choices=STAGE_KINDS,
                  doc="supervised: labeled pool only; self_train: pseudo-label then fresh student; "
                      "query: score + reveal regions, then self_train"),
    "epochs": Field("int", 100),
    "iters_per_epoch": Field("int", 50, doc="optimizer steps per epoch"),
    "batch_labeled": Field("int", 4, doc="labeled images per step and GPU"),
    "batch_unlabeled": Field("int", 0, doc="pseudo-labeled images per step and GPU"),
    "reco": Field("bool", True, doc="add the ReCo loss on the representation head"),
    "init": Field("str", "pretrained", choices=("pretrained", "scratch", "teacher"),
                  doc="weights a fresh model starts from: model.pretrained, random, or the previous stage"),
    "noise": Field("bool", False, doc="student noise: dropout (MobileNetV2) / stochastic depth (ResNets)"),
    "eval_every": Field("int", 0, doc="evaluate every N epochs (0: only at the end of the stage)"),
}

SCHEMA: dict = {
    "seed": Field("int", 0),
    "output_dir": Field("str", None, nullable=True, doc="default runs/<config name>"),
    "init_from": Field("str", None, nullable=True,
                       doc="config name of a run whose finished leading stages, if identical, are reused"),
    "init_from_dir": Field("str", None, nullable=True,
                           doc="run directory of the init_from run; default: that config's output_dir "
                               "(reproduce.py --seed points it at the seed's own chain)"),
    "deterministic": Field("bool", False, doc="deterministic kernels (fp32 CPU runs are then bit-reproducible)"),
    "data": {
        "dataset": Field("str", required=True, choices=("camvid", "cityscapes", "synthetic", "folder"),
                         doc="folder = your own data: <root>/<split>/images + labels, or list files"),
        "classes": Field("strlist", None, nullable=True,
                         doc="folder: class names in label-id order (required there, refused elsewhere)"),
        "ignore_index": Field("int", 255, doc="folder: raw label value that is ignored"),
        "label_map": Field("intmap", None, nullable=True,
                           doc="folder: raw label value -> class id (255 = ignore); null: raw value = id"),
        "palette": Field("rgblist", None, nullable=True,
                         doc="folder: [r, g, b] per class for prediction pictures; null: project palette"),
        "root": Field("str", required=True, doc="dataset folder"),
        "train_split": Field("str", "train", doc="split name or list file of the training pool"),
        "eval_split": Field("str", "test", doc="split name or list file evaluated after each stage"),
        "labeled_split": Field("str", None, nullable=True,
                               doc="list file of labeled images (semi-supervised; AL: replaces the random 10%)"),
        "resize": Field("int2", None, nullable=True, doc="[h, w] working resolution; null keeps native size"),
        "crop_size": Field("int2", [360, 480]),
        "scale_range": Field("float2", [0.5, 2.0]),
        "workers": Field("int", None, nullable=True,
                         doc="loader worker processes per rank, for training, evaluation, pseudo-labelling "
                             "and the data scan; null: the CPU cores this process may use divided by the "
                             "ranks on this node (resolved when the config is loaded, at least 1); "
                             "0 loads in the main process (debugging)"),
        "cache_dir": Field("str", "runs/resized_cache", nullable=True,
                           doc="folder keeping images and labels already resized to data.resize (raw "
                               "uint8, ~1.9 MB per 688x688 pair), built by the data scan and shared by "
                               "runs; used only for images that data.resize shrinks; null: decode and "
                               "resize on every read"),
        "synthetic": {
            "num_train": Field("int", 60), "num_val": Field("int", 20), "num_test": Field("int", 20),
            "height": Field("int", 96), "width": Field("int", 128), "seed": Field("int", 0),
        },
    },
    "aug": {
        "blur_p": Field("float", 0.5), "jitter": Field("float4", [0.4, 0.4, 0.4, 0.1]),
        "jitter_p": Field("float", 0.8), "grayscale_p": Field("float", 0.0),  # not in the paper: opt in
        "cutout_p": Field("float", 0.5), "cutout_frac": Field("float2", [0.02, 0.2]),
    },
    "model": {
        "backbone": Field("str", "mobilenet_v2", choices=("mobilenet_v2", "resnet50", "resnet101_deepstem", "efficientnet_lite0")),
        "output_stride": Field("int", 16, choices=(8, 16)),
        "pretrained": Field("str", "imagenet", doc="imagenet | none | path to a local .pth"),
        "rep_dim": Field("int", 256),
        "dropout": Field("float", 0.1, doc="student noise for MobileNetV2"),
        "stochastic_depth": Field("float", 0.1, doc="student noise for ResNets"),
        "sync_bn": Field("bool", False, doc="synchronise BatchNorm statistics across ranks (the paper does not say)"),
    },
    "loss": {
        "reco_weight": Field("float", 1.0),
        "unlabeled_weight": Field("float", 1.0, doc="weight of CE on pseudo-labeled images"),
        "temperature": Field("float", 0.5), "num_queries": Field("int", 256),
        "num_negatives": Field("int", 512), "strong_threshold": Field("float", 0.97),
    },
    "optim": {
        "lr": Field("float", 0.01), "momentum": Field("float", 0.9), "nesterov": Field("bool", False),
        "weight_decay": Field("float", 1e-4), "head_lr_mult": Field("float", 1.0),
        "poly_power": Field("float", 0.9), "grad_clip": Field("float", 0.0, doc="max grad norm, 0 = off"),
    },
    "runtime": {
        "device": Field("str", "auto", choices=("auto", "cpu", "cuda")),
        "amp": Field("str", "auto", choices=("auto", "none", "bf16", "fp16"),
                     doc="auto = bf16 on GPUs of compute capability >= 8.0, fp16 + GradScaler on older "
                         "GPUs (V100, T4); on CPU bf16 with AMX/AVX512-BF16, else fp32"),
        "dist_timeout_minutes": Field("float", 60.0,
                                      doc="collective timeout of the process group: long enough for "
                                          "rank-0-only work (summaries, panels) while the others wait"),
        "channels_last": Field("bool", True),
        "checkpoint_minutes": Field("float", 10.0, doc="minutes between resumable checkpoints (rank 0's "
                                                        "clock, looked at every log_every steps)"),
        "checkpoint_every": Field("int", None, nullable=True,
                                  doc="also checkpoint every N steps (null: by time only)"),
        "log_every": Field("int", 10, doc="steps between TensorBoard scalars"),
        "nonfinite": Field("str", "stop", choices=("stop", "skip"),
                           doc="on a NaN/inf loss: stop the run, or skip the step and count it"),
    },
    "eval": {
        "mode": Field("str", "whole", choices=("whole", "slide")),
        "window": Field("int2", [768, 768]), "stride": Field("int2", [512, 512]),
        "flip": Field("bool", False),
        "scales": Field("floatlist", [1.0], doc="evaluation scales; softmax averaged over them (and flips)"),
        "batch_size": Field("int", 1, doc="images per evaluation batch; above 1 is faster on GPUs, and the "
                                          "mIoU then depends on how ranks shard the images at float "
                                          "precision only (1: exactly the same in any world size)"),
        "window_batch": Field("int", 8, doc="crops per forward pass in evaluation and pseudo-labelling: "
                                            "sliding windows (or whole images, flips included) of the "
                                            "batch's images; bounds memory"),
    },
    "pseudo": {
        "threshold": Field("float", 0.7), "scales": Field("floatlist", [1.0]), "flip": Field("bool", False),
        "batch_size": Field("int", 1, doc="images per batch of the pseudo-label / region-scoring pass; "
                                          "1 keeps every image's scores, and so the queried regions, "
                                          "identical in any world size"),
    },
    "query": {
        "initial_fraction": Field("float", 0.1, doc="fraction of whole images labeled at the start"),
        "region_size": Field("int2", [30, 30]),
        "strategy": Field("str", "entropy", choices=("entropy", "random", "margin", "least_confidence", "bald"),
                          doc="how regions are ranked, by the mean of a per-pixel score (query/strategies/, "
                              "one module each): entropy = -sum_c p_c log p_c of the softmax (the paper's); "
                              "random = uniform random regions, the baseline (reads no model); "
                              "margin = 1 - (p1 - p2), the two most probable classes; "
                              "least_confidence = 1 - max_c p_c; "
                              "bald = mutual information H(mean_t p_t) - mean_t H(p_t) over query.mc_passes "
                              "passes with the student's noise on (model.dropout / model.stochastic_depth)"),
        "mc_passes": Field("int", 8, doc="bald only: noisy forward passes per image (at least 2), each "
                                         "seeded by the stage and the image, so any world size picks the same regions"),
        "selection": Field("str", "per_image", choices=("per_image", "global")),
        "regions_per_image": Field("int", 4),
        "budget_pct": Field("float", 2.0, doc="global selection: labeled pixels added per cycle, % of the pool"),
        "oracle": Field("str", "ground_truth", choices=("ground_truth", "human"),
                        doc="who labels the queried regions: the dataset's labels (the paper's simulation), "
                            "or a person (the run stops at each query until the labels are written)"),
        "vis_images": Field("int", 4, doc="query panels drawn per cycle"),
    },
    "stage_defaults": {k: v for k, v in STAGE_SCHEMA.items() if k != "kind"},
    "stages": "STAGES",  # mapping name -> STAGE_SCHEMA, checked separately (ordered as written)
}


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
        noise = "stochastic_depth" if model["backbone"].startswith("resnet") else "dropout"
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


def with_new_defaults(saved: dict) -> dict:
    """A run's saved config with the keys added to the schema since it was written, at their
    defaults. A key is only ever added with the default that does what the code did before it
    existed (e.g. query.mc_passes, used by a strategy that did not exist), so an older run compares
    equal to the same config today. Keys the schema no longer has are kept: they still differ."""
    def fill(tree: dict, schema: dict) -> dict:
        out = dict(tree)
        for key, field in schema.items():
            if isinstance(field, dict):
                if isinstance(out.get(key), dict):
                    out[key] = fill(out[key], field)
            elif isinstance(field, Field) and key not in out and not field.required:
                out[key] = field.default
        return out

    filled = fill(saved, SCHEMA)
    if isinstance(filled.get("stages"), dict):
        filled["stages"] = {name: fill(stage, STAGE_SCHEMA) if isinstance(stage, dict) else stage
                            for name, stage in filled["stages"].items()}
    return filled


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    from core.io import atomic_write_text
    atomic_write_text(path, dump_config(cfg))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
