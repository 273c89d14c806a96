"""One training step of DeepLabv3+ MobileNetV2 (OS 16), batch 4 at 360x480, 11 classes.

Variants, each timed as forward + loss + backward + SGD step:
  bare   model without representation head, cross-entropy only
  head   model with the representation head, cross-entropy only (the head's own cost)
  full   model with the representation head, cross-entropy + ReCo (the S4AL+ step)
on CPU in fp32, channels_last, and channels_last + bf16 autocast, and on CUDA (when present)
fp32 vs AMP + channels_last. Ends with `ratio: <full / bare, CPU fp32>`.

    python benchmarks/train_step.py [--steps 3] [--settings fp32,channels_last,bf16] [--variants bare,head,full]

The final ratio needs the fp32 bare and full rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from losses.reco import IGNORE_INDEX, reco_loss  # noqa: E402
from models import build_model  # noqa: E402

BATCH, HEIGHT, WIDTH, NUM_CLASSES = 4, 360, 480, 11


def make_batch(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(BATCH, 3, HEIGHT, WIDTH, generator=g)
    cells = torch.randint(0, NUM_CLASSES, (BATCH, 1, 9, 12), generator=g).float()
    label = F.interpolate(cells, size=(HEIGHT, WIDTH), mode="nearest")[:, 0].long()
    label[torch.rand(label.shape, generator=g) < 0.05] = IGNORE_INDEX
    return image.to(device), label.to(device)


def make_step(variant, device, channels_last, autocast_dtype):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=NUM_CLASSES, output_stride=16,
                        rep_head=variant != "bare").to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(image, label):
        image = image.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            if variant == "bare":
                logits = model(image)
            else:
                logits, rep, coarse = model(image, return_rep=True)
            loss = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX)
        if variant == "full":
            # ReCo wants class probabilities at representation resolution (the classifier's stride-4 output).
            loss = loss + reco_loss(rep, label, torch.softmax(coarse.detach().float(), 1), NUM_CLASSES,
                                    generator=generator)
        loss.backward()
        optimizer.step()

    return step


def time_step(variant, device, steps, channels_last=False, autocast_dtype=None, warmup=1):
    image, label = make_batch(device)
    step = make_step(variant, device, channels_last, autocast_dtype)
    times = []
    for i in range(warmup + steps):  # warm-up steps pay for allocations and kernel selection
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(image, label)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_has_native_bf16():
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--settings", default="fp32,channels_last,bf16", help="CPU settings to time")
    parser.add_argument("--variants", default="bare,head,full", help="step variants to time")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default); 1 gives stable figures on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen, variants = args.settings.split(","), args.variants.split(",")
    unknown = set(chosen) - {"fp32", "channels_last", "bf16"} | set(variants) - {"bare", "head", "full"}
    if unknown:
        raise SystemExit(f"unknown settings/variants: {sorted(unknown)}")
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; batch {BATCH} at {HEIGHT}x{WIDTH}")

    bf16_name = "channels_last+bf16" + ("" if cpu_has_native_bf16() else " (no native bf16 on this CPU)")
    settings = {"fp32": ("fp32", False, None), "channels_last": ("channels_last", True, None),
                "bf16": (bf16_name, True, torch.bfloat16)}
    names = {"bare": "bare", "head": "+rep head", "full": "+rep head +ReCo"}
    results = {}
    for key in chosen:
        label, channels_last, dtype = settings[key]
        row = {}
        for v in variants:
            row[v] = time_step(v, cpu, args.steps, channels_last, dtype, args.warmup)
            print(f"cpu {label}: {names[v]} step {row[v]:.2f} s", flush=True)
        results[key] = row
        if "bare" in row and "full" in row:
            print(f"cpu {label}: full/bare {row['full'] / row['bare']:.2f}", flush=True)

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        fp32 = time_step("full", gpu, args.steps * 3)
        fast = time_step("full", gpu, args.steps * 3, channels_last=True, autocast_dtype=amp)
        print(f"cuda full step: fp32 {fp32 * 1e3:.1f} ms, AMP {amp} + channels_last {fast * 1e3:.1f} ms, "
              f"speed-up {fp32 / fast:.2f}x")

    fp32 = results.get("fp32", {})
    if not {"bare", "full"} <= set(fp32):
        print("(no ratio: the fp32 bare and full steps were not both timed)")
        return
    if "head" in fp32:
        print(f"rep head alone costs {fp32['head'] / fp32['bare']:.2f}x the bare step; "
              f"ReCo on top of it {fp32['full'] / fp32['head']:.2f}x")
    print(f"ratio: {fp32['full'] / fp32['bare']:.2f}")


if __name__ == "__main__":
    main()
