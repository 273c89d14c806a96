"""Can data loading keep up with training? Times a DataLoader with 2 workers producing batches of
4 CamVid-sized (360x480) samples with WeakAug and with StrongAug.

Uses the real CamVid copy (../shared/data/camvid) when present, else a synthetic set generated
at 360x480 in a temporary folder. Reference step times: ~1.0 s for one DeepLabv3+ MobileNetV2
training step on this 2-core CPU (bf16 + channels_last, DESIGN.md) and ~0.1 s on a GPU.
The last line is `ratio: X` = 0.1 s / (seconds per batch of the slower augmentation):
above 1 means two workers feed a GPU faster than it trains.

    python benchmarks/data_loading.py [--root DIR | --synthetic] [--batches 40]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets import StrongAug, WeakAug, build_source, full_view, generate_synthetic  # noqa: E402

REAL_CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
CPU_STEP_S, GPU_STEP_S = 1.0, 0.1
CROP = (360, 480)


def time_loader(view, batches: int, workers: int, batch_size: int) -> float:
    """Seconds per batch in steady state (after the workers have started and warmed up)."""
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    warmup = 3
    done, start = 0, None
    while done < warmup + batches:           # loop over epochs when the set is small
        for batch in loader:
            assert batch["image"].shape == (batch_size, 3, *CROP)
            done += 1
            if done == warmup:
                start = time.perf_counter()
            if done == warmup + batches:
                break
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="CamVid folder (default: ../shared/data/camvid or synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="use generated data even when "
                        "the real CamVid copy is present")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.root:
            dataset, root = "camvid", Path(args.root)
        elif REAL_CAMVID.exists() and not args.synthetic:
            dataset, root = "camvid", REAL_CAMVID
        else:
            dataset, root = "synthetic", Path(tmp) / "synthetic_360x480"
            print("generating 48 synthetic images at 360x480 (no real CamVid, or --synthetic) ...")
            generate_synthetic(root, num_train=48, num_val=0, num_test=0, height=360, width=480)
        source = build_source(dataset, root, "train")
        print(f"data: {dataset} at {root} ({len(source)} train images), batch {args.batch_size}, "
              f"{args.workers} workers, crop {CROP[0]}x{CROP[1]}, {args.batches} timed batches")

        per_batch = {}
        for name, aug in (("WeakAug", WeakAug(CROP, (0.5, 2.0))), ("StrongAug", StrongAug(CROP, (0.5, 2.0)))):
            seconds = time_loader(full_view(source, aug), args.batches, args.workers, args.batch_size)
            per_batch[name] = seconds
            print(f"{name:9s}: {seconds * 1000:7.1f} ms/batch, {args.batch_size / seconds:6.1f} images/s, "
                  f"{CPU_STEP_S / seconds:5.1f}x faster than a ~{CPU_STEP_S:.1f} s CPU step, "
                  f"{GPU_STEP_S / seconds:4.2f}x a ~{GPU_STEP_S:.1f} s GPU step")
    slowest = max(per_batch.values())
    print(f"ratio: {GPU_STEP_S / slowest:.2f}")


if __name__ == "__main__":
    main()
