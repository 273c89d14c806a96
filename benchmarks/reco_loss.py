"""ReCo loss: our batched implementation vs a per-class-loop formulation of the same algorithm.

The per-class loop is how the original ReCo code computes it: a Python loop over the present
classes, each gathering its negatives into a [queries, negatives, dim] tensor and calling
`cosine_similarity` on it. Inputs: representation 4x256x90x120, 11 classes, 256 queries, 512
negatives (CamVid at 360x480, stride 4). Prints forward+backward time and peak memory on CPU
(and CUDA when present), the mean loss of both over many draws, and ends with
`ratio: <CPU speed-up>`.

    python benchmarks/reco_loss.py [--repeats 3] [--draws 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from losses.reco import IGNORE_INDEX, downsample_labels, reco_loss  # noqa: E402

NUM_CLASSES, DIM, BATCH, REP_H, REP_W, STRIDE = 11, 256, 4, 90, 120, 4
DEFAULTS = dict(temperature=0.5, num_queries=256, num_negatives=512, strong_threshold=0.97)


def per_class_loop_reco(rep, label, prob, num_classes, temperature, num_queries, num_negatives,
                        strong_threshold, generator=None):
    """Baseline: the same algorithm as losses.reco, one present class at a time."""
    label = downsample_labels(label, rep.shape[-2:])
    rep = rep.permute(0, 2, 3, 1)  # N h w D
    dim = rep.shape[-1]
    all_feats, hard_feats, counts, means = [], [], [], []
    for c in range(num_classes):
        mask = label == c
        if not mask.any():
            continue
        hard = mask & (prob[:, c] < strong_threshold)
        all_feats.append(rep[mask])
        hard_feats.append(rep[hard])
        counts.append(int(mask.sum()))
        means.append(rep[mask].mean(0, keepdim=True))
    if len(counts) < 2:
        return rep.sum() * 0
    means = torch.cat(means)
    loss = rep.sum() * 0
    for i in range(len(counts)):
        if len(hard_feats[i]) == 0:
            continue
        pick = torch.randint(len(hard_feats[i]), (num_queries,), generator=generator, device=rep.device)
        anchors = hard_feats[i][pick]
        with torch.no_grad():
            others = [j for j in range(len(counts)) if j != i]
            sim = torch.cosine_similarity(means[i:i + 1], means[others], dim=1)
            neg_class = torch.multinomial(torch.softmax(sim / temperature, 0), num_queries * num_negatives,
                                          replacement=True, generator=generator)
            other_counts = torch.tensor([counts[j] for j in others], device=rep.device)
            starts = torch.cumsum(other_counts, 0) - other_counts
            pool = torch.cat([all_feats[j] for j in others])
            offset = torch.randint(0, 2**62, neg_class.shape, generator=generator, device=rep.device)
            negatives = pool[starts[neg_class] + offset % other_counts[neg_class]].view(num_queries, num_negatives, dim)
            keys = torch.cat([means[i].expand(num_queries, 1, dim), negatives], dim=1)
        logits = torch.cosine_similarity(anchors.unsqueeze(1), keys, dim=2) / temperature
        target = torch.zeros(num_queries, dtype=torch.long, device=rep.device)
        loss = loss + F.cross_entropy(logits, target)
    return loss / len(counts)


IMPLEMENTATIONS = {"ours": reco_loss, "per_class_loop": per_class_loop_reco}


def make_inputs(device, seed=0):
    """Street-scene-like blocky labels at input size (5% ignore), probabilities at rep size with
    a mix of confident (easy) and unsure (hard) pixels, random representations."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, NUM_CLASSES, (BATCH, 1, 9, 12), generator=g).float()
    label = F.interpolate(cells, size=(REP_H * STRIDE, REP_W * STRIDE), mode="nearest")[:, 0].long()
    label[torch.rand(label.shape, generator=g) < 0.05] = IGNORE_INDEX
    small = downsample_labels(label, (REP_H, REP_W)).clamp(max=NUM_CLASSES - 1)
    logits = torch.randn(BATCH, NUM_CLASSES, REP_H, REP_W, generator=g) * 2
    logits += 7 * torch.rand(BATCH, 1, REP_H, REP_W, generator=g) * F.one_hot(small, NUM_CLASSES).permute(0, 3, 1, 2)
    prob = torch.softmax(logits, dim=1)
    rep = torch.randn(BATCH, DIM, REP_H, REP_W, generator=g)
    return rep.to(device).requires_grad_(True), label.to(device), prob.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward_backward(name, device, repeats):
    rep, label, prob = make_inputs(device)
    fn = IMPLEMENTATIONS[name]
    gen = torch.Generator(device=device).manual_seed(0)
    times, losses = [], []
    for i in range(repeats + 1):  # the first run warms up
        rep.grad = None
        _sync(device)
        start = time.perf_counter()
        loss = fn(rep, label, prob, NUM_CLASSES, generator=gen, **DEFAULTS)
        loss.backward()
        _sync(device)
        if i > 0:
            times.append(time.perf_counter() - start)
            losses.append(loss.item())
    return statistics.median(times), losses


def peak_memory_mb(name, device):
    """Extra peak memory of one forward+backward above the inputs. CPU: in a fresh process,
    from its resident-set high-water mark; CUDA: from the allocator's peak."""
    if device.type == "cuda":
        rep, label, prob = make_inputs(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        IMPLEMENTATIONS[name](rep, label, prob, NUM_CLASSES, **DEFAULTS).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    out = subprocess.run([sys.executable, __file__, "--child-memory", name], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child_memory(name):
    """Linux only. getrusage's ru_maxrss is inherited from the parent across fork+exec, so the
    high-water mark is read from /proc/self/status (VmHWM), reset to the current size after the
    inputs are built (writing 5 to clear_refs)."""
    rep, label, prob = make_inputs(torch.device("cpu"))
    rep.sum().backward()  # allocate rep.grad before measuring, as in a training step
    rep.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    IMPLEMENTATIONS[name](rep, label, prob, NUM_CLASSES, **DEFAULTS).backward()
    print(json.dumps({"peak_mb": (_status_kib("VmHWM") - before) / 1024}))


def mean_loss_over_draws(device, draws, num_queries, num_negatives):
    rep, label, prob = make_inputs(device)
    cfg = dict(DEFAULTS, num_queries=num_queries, num_negatives=num_negatives)
    result = {}
    with torch.no_grad():
        for name, fn in IMPLEMENTATIONS.items():
            gen = torch.Generator(device=device).manual_seed(123 if name == "ours" else 456)
            values = [fn(rep, label, prob, NUM_CLASSES, generator=gen, **cfg).item() for _ in range(draws)]
            result[name] = (statistics.mean(values), statistics.stdev(values) / draws ** 0.5)
    return result


def report(device, args):
    print(f"--- {device.type}: rep {BATCH}x{DIM}x{REP_H}x{REP_W}, {NUM_CLASSES} classes, "
          f"{DEFAULTS['num_queries']} queries, {DEFAULTS['num_negatives']} negatives")
    timings = {}
    for name in IMPLEMENTATIONS:
        seconds, losses = time_forward_backward(name, device, args.repeats)
        memory = peak_memory_mb(name, device)
        timings[name] = seconds
        print(f"{name:>15}: forward+backward {seconds:.3f} s (median of {args.repeats}), "
              f"peak extra memory {memory:.0f} MiB, losses {', '.join(f'{v:.4f}' for v in losses)}")
    draws = mean_loss_over_draws(device, args.draws, args.agree_queries, args.agree_negatives)
    (m1, s1), (m2, s2) = draws["ours"], draws["per_class_loop"]
    print(f"mean loss over {args.draws} draws ({args.agree_queries} queries, {args.agree_negatives} negatives): "
          f"ours {m1:.4f} +- {s1:.4f}, per-class loop {m2:.4f} +- {s2:.4f}, "
          f"difference {abs(m1 - m2) / max((s1 ** 2 + s2 ** 2) ** 0.5, 1e-12):.1f} standard errors")
    speedup = timings["per_class_loop"] / timings["ours"]
    print(f"{device.type} speed-up: {speedup:.1f}x")
    return speedup


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--agree-queries", type=int, default=64,
                        help="queries per class for the mean-loss comparison (the loop is slow)")
    parser.add_argument("--agree-negatives", type=int, default=128)
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default); 1 gives stable figures on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_memory:
        _child_memory(args.child_memory)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        report(torch.device("cuda"), args)
    cpu_speedup = report(torch.device("cpu"), args)
    print(f"ratio: {cpu_speedup:.2f}")


if __name__ == "__main__":
    main()
