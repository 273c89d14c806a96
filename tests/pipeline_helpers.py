"""Tiny end-to-end runs of the real scripts for the pipeline and reliability tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

TINY = """
seed: 3
deterministic: true
data:
  dataset: synthetic
  root: {data_root}
  train_split: train
  eval_split: val
  crop_size: [48, 64]
  scale_range: [0.75, 1.25]
  workers: 0
  synthetic: {{num_train: 12, num_val: 4, num_test: 2, height: 48, width: 64, seed: 1}}
model: {{backbone: mobilenet_v2, pretrained: none, rep_dim: 8}}
loss: {{num_queries: 8, num_negatives: 16}}
runtime: {{device: cpu, amp: none, checkpoint_every: 2, log_every: 1}}
query: {{initial_fraction: 0.25, region_size: [16, 16], regions_per_image: 2, vis_images: 2}}
stage_defaults: {{epochs: 2, iters_per_epoch: 3, init: scratch}}
output_dir: {output_dir}
"""

AL_STAGES = """
stages:
  teacher: {kind: supervised, batch_labeled: 2}
  student: {kind: self_train, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, epochs: 1}
  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher}
"""


def write_config(folder: Path, name: str, output_dir: Path, data_root: Path, stages: str = AL_STAGES,
                 extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TINY.format(data_root=data_root, output_dir=output_dir) + stages + extra)
    return path


def run_script(script: str, config: Path, *overrides: str, die_at: str | None = None, nproc: int = 1,
               timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1" if nproc > 1 else "2"}
    env.pop("S4AL_DIE_AT", None)
    if die_at:
        env["S4AL_DIE_AT"] = die_at
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script, "--config", str(config), *overrides]
    else:
        cmd = [sys.executable, script, "--config", str(config), *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def final_weights(run_dir: Path) -> dict:
    last = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit())[-1]
    return torch.load(last / "weights.pth", weights_only=False)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ at {k}"


def pool_cells(path: Path) -> np.ndarray:
    from query.pool import LabelPool
    return LabelPool.load(path).cells


def leftover_temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if ".tmp-" in p.name or p.name.endswith(".copying")]
