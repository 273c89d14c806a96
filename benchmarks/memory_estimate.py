"""Estimated peak training memory per GPU of paper configs, without a GPU.

One training step of each config's largest stage (its crop, its per-GPU batch, the representation
head, student noise, SGD with momentum) runs on *fake* tensors (torch FakeTensorMode: shapes and
dtypes only, nothing is computed or allocated), while torch's MemTracker adds up parameters,
gradients, optimizer state, saved activations and temporaries. It is printed in fp32 and with
bf16 autocast (what `runtime.amp: auto` uses on CUDA), next to a 16 GB budget (the paper's V100).

    python benchmarks/memory_estimate.py tableS1/r101d_186 table1/cityscapes/row9 ...
    python benchmarks/memory_estimate.py --table tableS1 --table table1_cityscapes --table equal
    python benchmarks/memory_estimate.py validation/camvid_cpu_al --check   # vs a real CPU step

--check also runs real fp32 steps on the CPU and measures how much the resident memory grows
during one (glibc is told to mmap every block >= 64 KiB, so freed memory leaves the RSS at once);
it should equal the estimate's activations + temporaries.

Not included, so budget ~1 GiB for them: the CUDA context, cuDNN workspaces, allocator
fragmentation, and the ReCo loss (its shapes depend on the labels, so it cannot run on fake
tensors; it gathers in fixed 2 MB blocks, ~0.1 GiB measured by benchmarks/reco_loss.py).
Memory layout (channels_last) does not change the byte counts, so tensors stay contiguous.
The fp16/bf16 figure uses CPU autocast rules, which cast the same conv/matmul ops as CUDA's.
A config fits when its bf16 estimate + 1 GiB overhead <= 15.78 GiB.
Ends with `ratio: X` = fp32 estimate / bf16 estimate of the last config named.
Needs torch >= 2.5 (torch.distributed._tools.mem_tracker).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.config_args import (V100_MIB, add_config_arguments, configs_and_overrides,  # noqa: E402
                                    largest_stage)
from benchmarks.config_args import num_classes as config_num_classes  # noqa: E402
from core.config import load_config  # noqa: E402
from models.build import make_model  # noqa: E402
from engine.optim import make_optimizer  # noqa: E402
from losses.ce import masked_cross_entropy  # noqa: E402

BUDGET_GIB = V100_MIB / 1024
OVERHEAD_GIB = 1.0  # CUDA context, cuDNN workspaces, fragmentation, ReCo: not on the fake tensors


class StepRunner:
    """The model, optimizer and one training step of a config's largest stage, on random tensors.
    CE on all images; the representation head's output enters the loss through a mean square,
    standing in for ReCo (whose shapes depend on the labels) so the head's backward is counted."""

    def __init__(self, cfg):
        _, self.stage = largest_stage(cfg)
        self.num_classes = config_num_classes(cfg)
        self.shape = (self.stage.batch_labeled + self.stage.batch_unlabeled, *cfg.data.crop_size)
        self.model = make_model(cfg.model, self.num_classes, rep_head=self.stage.reco, noise=self.stage.noise,
                                pretrained="none")
        self.model.train()
        self.optimizer = make_optimizer(self.model, cfg.optim)

    def step(self, dtype: torch.dtype = torch.float32) -> None:
        n, h, w = self.shape
        images, labels = torch.randn(n, 3, h, w), torch.randint(0, self.num_classes, (n, h, w))
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            if self.stage.reco:
                logits, rep, _ = self.model(images, return_rep=True)
            else:
                logits, rep = self.model(images), None
        loss = masked_cross_entropy(logits, labels)
        if rep is not None:
            loss = loss + rep.float().square().mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def estimate_peak_gib(cfg, dtype: torch.dtype) -> dict[str, float]:
    """Peak bytes of one training step of the config's largest stage, by category, in GiB."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as err:
        raise SystemExit(f"error: memory_estimate.py needs torch >= 2.5 ({err})") from None
    with FakeTensorMode():
        runner = StepRunner(cfg)
        # A first (zero) step creates the momentum buffers, as any step after the first has them.
        for p in runner.model.parameters():
            p.grad = torch.zeros_like(p)
        runner.optimizer.step()
        runner.optimizer.zero_grad(set_to_none=True)
        tracker = MemTracker()
        tracker.track_external(runner.model, runner.optimizer)
        with tracker:
            runner.step(dtype)
        snapshot = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return {str(getattr(k, "value", k)): v / 2**30 for k, v in snapshot.items()}


def measure_cpu_step_gib(name: str, overrides: list[str]) -> float:
    """Growth of the resident set during one real fp32 training step of config `name` on the CPU
    (the third; the first two create the momentum buffers and warm up), in GiB. Run it in a fresh
    process (ru_maxrss is a lifetime peak) that has MALLOC_MMAP_THRESHOLD_ set."""
    runner = StepRunner(load_config(name, overrides))
    runner.step()
    runner.step()
    page = os.sysconf("SC_PAGE_SIZE")
    before = int(Path("/proc/self/statm").read_text().split()[1]) * page
    # ru_maxrss is the lifetime peak; it is reached in a step after the first, once the momentum
    # buffers exist, because every freed block goes back to the OS and the baseline is steady.
    runner.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - before) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--check", action="store_true", help="also measure a real fp32 CPU step")
    args = parser.parse_intermixed_args()
    if args.check and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # Must be set before the process starts: re-run this script with it.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    names, overrides = configs_and_overrides(parser, args)
    rows = []
    for name in names:
        cfg = load_config(name, overrides)
        stage_name, stage = largest_stage(cfg)
        fp32 = estimate_peak_gib(cfg, torch.float32)
        bf16 = estimate_peak_gib(cfg, torch.bfloat16)
        rows.append((name, stage_name, stage, cfg, fp32, bf16))
        print(f"{name}: stage {stage_name}, batch {stage.batch_labeled}+{stage.batch_unlabeled}, "
              f"crop {cfg.data.crop_size}, {cfg.model.backbone} OS{cfg.model.output_stride}: "
              f"fp32 {fp32['Total']:.2f} GiB (activations {fp32['Activation']:.2f}), "
              f"bf16 autocast {bf16['Total']:.2f} GiB (activations {bf16['Activation']:.2f}); "
              f"fits 16 GB with AMP: {'yes' if bf16['Total'] + OVERHEAD_GIB <= BUDGET_GIB else 'NO'}", flush=True)
        if args.check:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                measured = pool.submit(measure_cpu_step_gib, name, overrides).result()
            estimated = fp32["Activation"] + fp32.get("Temp", 0.0)
            print(f"  check: a real fp32 CPU step grew the resident memory by {measured:.3f} GiB; "
                  f"estimated activations + temporaries {estimated:.3f} GiB "
                  f"({100 * (estimated / measured - 1):+.1f}%)", flush=True)
    print(f"ratio: {rows[-1][4]['Total'] / rows[-1][5]['Total']:.2f}")


if __name__ == "__main__":
    main()
