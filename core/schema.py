"""The config schema: every key a config may hold, its type, default and choices, with one line
of documentation each. core/config.py loads, merges and checks configs against it;
`with_new_defaults` lets a run saved before a key existed compare equal to the same config today.
"""
from __future__ import annotations

import re
from typing import Any

from core.errors import ConfigError


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


# Each backbone, with the `model` key that is its student noise (paper Sec. 3.3): dropout before
# the classifier for MobileNetV2 and EfficientNet-Lite0, stochastic depth on the residual blocks
# for the ResNets. models/build.py applies it; the config check for bald reads it.
BACKBONE_NOISE = {"mobilenet_v2": "dropout", "efficientnet_lite0": "dropout",
                  "resnet50": "stochastic_depth", "resnet101_deepstem": "stochastic_depth"}

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
        "backbone": Field("str", "mobilenet_v2", choices=tuple(BACKBONE_NOISE)),
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
