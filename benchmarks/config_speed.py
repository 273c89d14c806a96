"""Throughput and peak memory of a config's training step (its largest stage), on random tensors
of the config's crop and per-GPU batch: images/s, step time, peak memory, with the config's AMP
setting and in fp32. Ends with `ratio: X` = fp32 step time / AMP step time.

    python benchmarks/config_speed.py tableS1/r101d_186 [--steps 10] [--warmup 3] [key=value ...]
    python benchmarks/config_speed.py --table tableS1 --table table1_camvid   # every config of a table

On CUDA the peak is torch.cuda.max_memory_allocated; on CPU the process's peak RSS (an upper
bound that includes everything else the process holds). On CUDA each line also says whether the
peak fits a 16 GB V100 (16160 MiB, what the paper trained on; the CUDA context comes on top).
Each config ends with `ratio: X`.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.config_args import (V100_MIB, add_config_arguments, configs_and_overrides,  # noqa: E402
                                    largest_stage)
from benchmarks.config_args import num_classes as config_num_classes  # noqa: E402
from core.config import load_config  # noqa: E402
from core.distributed import resolve_device  # noqa: E402
from models.build import make_model  # noqa: E402
from engine.optim import make_optimizer  # noqa: E402
from core.precision import configure_backends, resolve_amp  # noqa: E402
from engine.trainer import step_loss, to_device  # noqa: E402


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(cfg, stage, device, amp: str, steps: int, warmup: int, model=None) -> tuple[float, float]:
    """(seconds per step, peak memory MiB) of `steps` training steps after `warmup` ones. `model`:
    the stage's network to reuse (built by `make_model` as here); a fresh one when None."""
    num_classes = config_num_classes(cfg)
    if model is None:
        model = make_model(cfg.model, num_classes, rep_head=stage.reco, noise=stage.noise, pretrained="none")
    model = model.to(device)
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    generator = torch.Generator(device=device).manual_seed(0)
    h, w = cfg.data.crop_size

    def batch(n):  # what a loader yields: uint8 images and labels (pinned on CUDA)
        if n == 0:
            return None
        pin = device.type == "cuda"
        return {"image": torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8).pin_memory() if pin else
                torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8),
                "label": torch.randint(0, num_classes, (n, h, w), dtype=torch.uint8)}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        images, labels = to_device(batch(stage.batch_labeled), batch(stage.batch_unlabeled), device,
                                   cfg.runtime.channels_last)
        loss, _ = step_loss(model, images, labels, stage.batch_labeled, reco=stage.reco, loss_cfg=cfg.loss,
                            amp=amp, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps, peak_memory_mib(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_intermixed_args()
    names, overrides = configs_and_overrides(parser, args)
    for name in names:
        cfg = load_config(name, overrides)
        device = resolve_device(cfg.runtime.device)
        stage_name, stage = largest_stage(cfg)
        amp, amp_reason = resolve_amp(cfg.runtime.amp, device)
        configure_backends(device, cfg.deterministic)  # cuDNN autotuning / TF32 as in a run
        images = stage.batch_labeled + stage.batch_unlabeled
        print(f"{cfg.name}: stage {stage_name}, batch {stage.batch_labeled}+{stage.batch_unlabeled} per GPU, "
              f"crop {cfg.data.crop_size}, {cfg.model.backbone} OS{cfg.model.output_stride}, device {device}; "
              f"amp {amp_reason}",
              flush=True)
        results = {}
        for mode in dict.fromkeys([amp, "none"]):
            step, peak = time_steps(cfg, stage, device, mode, args.steps, args.warmup)
            results[mode] = step
            verdict = f", fits 16 GB: {'yes' if peak <= V100_MIB else 'NO'}" if device.type == "cuda" else ""
            print(f"amp={mode:5s} step {step:.3f} s  {images / step:.1f} images/s  peak memory {peak:.0f} MiB"
                  f"{verdict}", flush=True)
        print(f"ratio: {results['none'] / results[amp]:.2f}")


if __name__ == "__main__":
    main()
