"""Can data loading keep up with training? Times a DataLoader with 2 workers producing batches of
4 CamVid-sized (360x480) samples with WeakAug and with StrongAug.

Uses the real CamVid copy (../shared/data/camvid) when present, else a synthetic set generated
at 360x480 in a temporary folder. Reference step times: ~1.0 s for one DeepLabv3+ MobileNetV2
training step on this 2-core CPU (bf16 + channels_last, DESIGN.md) and ~0.1 s on a GPU.
The last line is `ratio: X` = 0.1 s / (seconds per batch of the slower augmentation):
above 1 means two workers feed a GPU faster than it trains.

    python benchmarks/data_loading.py [--root DIR | --synthetic] [--batches 40]

`--cityscapes-cache`: the Cityscapes active-learning case instead. Writes a few generated
1024x2048 street scenes (textured, lit, noisy: PNGs the size of real Cityscapes ones) and their
*_gtFine_labelIds.png in Cityscapes' layout to a temporary folder, then times the engine's own
training loader (`engine.data.stream_loader`, WeakAug, 688x688 working size and crops, as
configs/_base_/cityscapes_al.yaml) and its evaluation / pseudo-label loader
(`engine.data.ordered_loader`), each reading the PNGs on every draw and reading the
resized-image cache (data.cache_dir), which the engine's data scan builds first (timed too).
The last line is `ratio: X` = training-loader images/s with the cache / without, same run.

    python benchmarks/data_loading.py --cityscapes-cache [--images 8] [--workers N]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
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


# CamVid-class scene -> Cityscapes labelId: sky, building, pole, road, sidewalk, vegetation,
# traffic sign, fence, car, person, rider; void -> unlabeled (0).
CAMVID_TO_LABEL_ID = np.array([23, 11, 17, 7, 8, 21, 20, 13, 26, 24, 25, 0], dtype=np.uint8)
CITY_SIZE, CITY_WORKING = (1024, 2048), (688, 688)


def write_cityscapes(root: Path, count: int) -> float:
    """`count` generated pairs in Cityscapes' layout; returns the mean image PNG size in MB."""
    from datasets.synthetic_scene import render_scene
    sizes = []
    for i in range(count):
        img, lab = render_scene(np.random.default_rng(i), *CITY_SIZE)
        # Slight optical blur: brings the PNGs to the ~2.2 MB of real leftImg8bit files (11 GB
        # for 5000 images); the generator's raw sensor noise alone makes them ~3.6 MB.
        img = cv2.GaussianBlur(img, (0, 0), 1.0)
        stem = f"bench_{i:06d}_000019"
        img_path = root / "leftImg8bit" / "train" / "bench" / f"{stem}_leftImg8bit.png"
        lab_path = root / "gtFine" / "train" / "bench" / f"{stem}_gtFine_labelIds.png"
        img_path.parent.mkdir(parents=True, exist_ok=True)
        lab_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(lab_path), CAMVID_TO_LABEL_ID[lab])
        sizes.append(img_path.stat().st_size / 1e6)
    return float(np.mean(sizes))


def images_per_second(batches, count: int, warmup: int = 2) -> float:
    """Images/s over `count` batches after `warmup` (workers started, queues filled once)."""
    seen, start = 0, None
    for done, batch in enumerate(batches, start=1):
        if done == warmup:
            start = time.perf_counter()
        elif done > warmup:
            seen += sum(len(group["image"]) for group in (batch if isinstance(batch, list) else [batch]))
        if done == warmup + count:
            break
    return seen / (time.perf_counter() - start)


def cityscapes_cache(args) -> None:
    from datasets import EvalTransform
    from engine.data import ordered_loader, stream_loader
    from core.distributed import DistContext
    from engine.scan import scan_source

    ctx, workers, batch = DistContext(), args.workers, args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        root, cache_dir = Path(tmp) / "cityscapes", Path(tmp) / "resized_cache"
        started = time.perf_counter()
        mb = write_cityscapes(root, args.images)
        print(f"generated {args.images} Cityscapes-layout pairs at {CITY_SIZE[0]}x{CITY_SIZE[1]} "
              f"(image PNGs {mb:.2f} MB on average; real leftImg8bit PNGs ~2.2 MB) in "
              f"{time.perf_counter() - started:.0f} s")
        plain = build_source("cityscapes", root, "train", resize=CITY_WORKING)
        cached = build_source("cityscapes", root, "train", resize=CITY_WORKING)
        cached.use_cache(cache_dir)
        started = time.perf_counter()
        scan_source(cached, None, ctx, workers=workers)  # what a run's start does: builds the cache
        build_s = time.perf_counter() - started
        print(f"cache build by the data scan: {build_s:.1f} s for {len(cached)} images "
              f"({workers} workers), {sum(f.stat().st_size for f in cache_dir.rglob('*.npz')) / 1e6 / len(cached):.2f} MB per pair")
        print(f"working size {CITY_WORKING[0]}x{CITY_WORKING[1]}, batch {batch}, {workers} workers")
        results = {}
        for name, src in (("PNG decode + resize", plain), ("resized cache", cached)):
            count = args.batches
            view = full_view(src, WeakAug(CITY_WORKING, (0.5, 2.0)))
            train = stream_loader(view, batch, 0, 0, count + 2, ctx, workers)
            results[name] = train_ips = images_per_second(train, count)
            indices = [i % len(src) for i in range(batch * (count + 2))]
            evaluation = ordered_loader(full_view(src, EvalTransform()), indices, batch, ctx, workers)
            eval_ips = images_per_second(evaluation, count)
            print(f"{name:20s}: training loader (WeakAug) {train_ips:6.1f} images/s, "
                  f"evaluation loader {eval_ips:6.1f} images/s")
    print(f"ratio: {results['resized cache'] / results['PNG decode + resize']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="CamVid folder (default: ../shared/data/camvid or synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="use generated data even when "
                        "the real CamVid copy is present")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cityscapes-cache", action="store_true",
                        help="time Cityscapes-sized reads with and without the resized-image cache")
    parser.add_argument("--images", type=int, default=8, help="--cityscapes-cache: generated pairs")
    args = parser.parse_args()
    if args.cityscapes_cache:
        cityscapes_cache(args)
        return

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
