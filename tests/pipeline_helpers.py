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
# Not the default 0.7, and between the tiny teachers' typical confidences: a pipeline that ignores
# pseudo.threshold writes other pseudo labels (tests/test_stage_contracts.py).
pseudo: {{threshold: 0.4}}
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


# Two gloo ranks (tests/test_reliability.py, tests/test_multinode.py): query1 is a noisy student, so
# each rank draws its own dropout masks, yet weights, pools and resumes must agree. 4 steps, so a
# kill at its 3rd step (train_step 9, after the teacher's 6) resumes from its step-2 checkpoint.
DDP_STAGES = ("stages:\n  teacher: {kind: supervised, batch_labeled: 2}\n"
              "  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, "
              "epochs: 1, iters_per_epoch: 4}\n")


SSL_STAGES = """
stages:
  teacher: {kind: supervised, batch_labeled: 2}
  round1: {kind: self_train, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, epochs: 1}
"""


def write_ssl_config(folder: Path, name: str, output_dir: Path, data_root: Path, labeled: list[str]) -> Path:
    """A tiny train_ssl.py config whose labeled split (written beside it) lists `labeled` ids."""
    split = folder / f"{name}_labeled.txt"
    split.write_text("".join(f"train/{i}.png trainannot/{i}.png\n" for i in labeled))
    path = write_config(folder, name, output_dir, data_root, stages=SSL_STAGES)
    path.write_text(path.read_text().replace("  train_split: train\n",
                                             f"  train_split: train\n  labeled_split: {split}\n"))
    return path


def run_script(script: str, config: Path, *overrides: str, die_at: str | None = None, nproc: int = 1,
               timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `script` (plain python, or torchrun with `nproc` gloo ranks). Fault hooks of
    core/faults.py are off unless asked for: `die_at`, or `env` (e.g. S4AL_PERTURB_RANK)."""
    extra = env or {}
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1" if nproc > 1 else "2"}
    for hook in ("S4AL_DIE_AT", "S4AL_PERTURB_RANK"):  # never inherited from the caller's shell
        env.pop(hook, None)
    env.update(extra)
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
    return torch.load(last / "weights.pth", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ at {k}"


def pool_cells(path: Path) -> np.ndarray:
    from query.pool import LabelPool
    return LabelPool.load(path).cells


def leftover_temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if ".tmp-" in p.name or p.name.endswith(".copying")]


# --------------------------------------------------------------------------- predictions by hand
# Independent of datasets/transforms.py and engine/inference.py: what a stage's model predicts for
# an image file, computed the plainest way (used to check pseudo labels and recorded mIoUs).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def stage_weights(run_dir: Path, stage: str) -> dict:
    return torch.load(run_dir / stage / "weights.pth", weights_only=True)["model"]


def noise_free_model(cfg, state: dict, num_classes: int):
    """The stage's network with `state` loaded (every key), without student noise, in eval mode."""
    from models.build import make_model
    rep_head = any(k.startswith("representation_head.") for k in state)
    model = make_model(cfg.model, num_classes, rep_head=rep_head, noise=False, pretrained="none")
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def softmax_of_image(model, image_file: str) -> torch.Tensor:
    """(C, H, W) softmax of the model's logits for one image file, at the file's resolution."""
    import cv2
    rgb = cv2.imread(image_file, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0
    x = torch.from_numpy(((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy())[None]
    return model(x)[0].softmax(dim=0)


def query_alone_from(source: dict, tmp_path: Path) -> tuple[Path, Path]:
    """Rerun a multi-rank AL run's query stage in one process: reuse only its teacher (init_from;
    query1 trains 1 step instead of 4), then pseudo-label, score and select alone. Checks that
    the run worked and that the scores and the pool match the source run's; returns (our query1
    folder, theirs) for further checks. `source`: {"data", "config", "run"} of the multi-rank run."""
    import numpy as np
    stages = DDP_STAGES.replace("iters_per_epoch: 4", "iters_per_epoch: 1")
    cfg = write_config(tmp_path, "one", tmp_path / "one", source["data"], stages=stages,
                       extra=f"init_from: {source['config']}\n")
    result = run_script("train_al.py", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("] reused from ") == 1  # the teacher; query1 computed here
    ours, theirs = tmp_path / "one" / "01_query1", source["run"] / "01_query1"
    one, two = np.load(ours / "pseudo_done.npz"), np.load(theirs / "pseudo_done.npz")
    assert (one["has_scores"] == two["has_scores"]).all()
    np.testing.assert_allclose(one["scores"], two["scores"], rtol=1e-5, atol=1e-6)
    assert (pool_cells(ours / "pool.npz") == pool_cells(theirs / "pool.npz")).all()
    return ours, theirs
