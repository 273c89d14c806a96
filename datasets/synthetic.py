"""The synthetic street-scene dataset: generated once, deterministically, in CamVid's layout.

    root/train/*.png  root/trainannot/*.png  root/train.txt   (and val, test)
    root/synthetic.json   the generation parameters

It is read back by the ordinary CamVid loader (build_source(dataset="synthetic", ...)), so the
demo and the tests exercise the real loading code. The set is written into a temporary sibling
folder and renamed into place, so a killed generation never leaves a half-written set.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from core.io import atomic_folder

from .classes import CAMVID_CLASSES
from .synthetic_scene import render_scene

# Bump when render_scene changes its output, so an old generated folder is reported as stale
# instead of silently mixing two generators' images.
GENERATOR_VERSION = 1
PARAMS_FILE = "synthetic.json"
SPLITS = ("train", "val", "test")


def synthetic_params(num_train: int, num_val: int, num_test: int, height: int, width: int,
                     seed: int) -> dict:
    params = {"num_train": num_train, "num_val": num_val, "num_test": num_test,
              "height": height, "width": width, "seed": seed}
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"generate_synthetic: {key} must be an int, got {value!r}")
    for key in ("num_train", "height", "width"):
        if params[key] <= 0:
            raise ValueError(f"generate_synthetic: {key} must be > 0, got {params[key]}")
    for key in ("num_val", "num_test"):
        if params[key] < 0:
            raise ValueError(f"generate_synthetic: {key} must be >= 0, got {params[key]}")
    if height < 16 or width < 16:
        raise ValueError(f"generate_synthetic: images must be at least 16x16, got {height}x{width}")
    return {"generator_version": GENERATOR_VERSION, "classes": list(CAMVID_CLASSES),
            **{k: int(v) for k, v in params.items()}}


def render_sample(split: str, index: int, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Image and label of one sample; each sample has its own seed, so any subset can be
    regenerated identically and splits never share images."""
    rng = np.random.default_rng([params["seed"], SPLITS.index(split), index])
    return render_scene(rng, params["height"], params["width"])


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _write_set(folder: Path, params: dict) -> None:
    for split in SPLITS:
        (folder / split).mkdir()
        (folder / f"{split}annot").mkdir()
        lines = []
        for index in range(params[f"num_{split}"]):
            name = f"synth_{split}_{index:04d}.png"
            img, lab = render_sample(split, index, params)
            _write_png(folder / split / name, img)
            _write_png(folder / f"{split}annot" / name, lab)
            lines.append(f"{split}/{name} {split}annot/{name}\n")
        (folder / f"{split}.txt").write_text("".join(lines))
    # Written last: its presence marks a complete set.
    (folder / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")


def _check_existing(root: Path, params: dict) -> None:
    """An existing folder must be a finished set made with exactly these parameters."""
    params_path = root / PARAMS_FILE
    if not params_path.is_file():
        raise FileExistsError(f"{root} exists but is not a generated synthetic set (no "
                              f"{PARAMS_FILE}); refusing to overwrite it")
    existing = json.loads(params_path.read_text())
    if existing != params:
        changed = sorted(k for k in set(existing) | set(params) if existing.get(k) != params.get(k))
        raise ValueError(f"{params_path} was generated with different parameters ({', '.join(changed)}"
                         f": {({k: existing.get(k) for k in changed})} on disk, "
                         f"{({k: params.get(k) for k in changed})} requested); delete the folder "
                         "or choose another root")


def generate_synthetic(root: str | os.PathLike, num_train: int = 100, num_val: int = 30,
                       num_test: int = 30, height: int = 96, width: int = 128,
                       seed: int = 0) -> Path:
    """Write the synthetic set to `root` (once). Same parameters again: nothing to do.
    Different parameters on an existing folder: ValueError naming the folder's synthetic.json."""
    root = Path(root)
    params = synthetic_params(num_train, num_val, num_test, height, width, seed)
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        _check_existing(root, params)
        return root
    try:
        with atomic_folder(root) as tmp:  # a temporary unique to this process, renamed into place
            _write_set(tmp, params)
    except OSError:
        # Another process (e.g. another DDP rank) finished first (the rename replaces only a
        # missing or empty folder): accept its identical set.
        if not (root / PARAMS_FILE).is_file():
            raise
        _check_existing(root, params)
    return root
