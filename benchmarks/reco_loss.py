"""ReCo loss: our batched implementation vs a per-class-loop formulation of the same algorithm.

The per-class loop is how the original ReCo code computes it: a Python loop over the present
classes, each gathering its negatives into a [queries, negatives, dim] tensor and calling
`cosine_similarity` on it. Inputs: representation 4x256x90x120, 11 classes, 256 queries, 512
negatives (CamVid at 360x480, stride 4). Prints forward+backward time and peak memory on CPU
(and CUDA when present), the mean loss of both over many draws, and ends with
`ratio: <CPU speed-up>`.

Ours works densely over all classes so that it never reads a value back to the host (see
losses/reco.py). "compact_host_reads" is the previous sampler, which works on the present
classes only and reads their number (and more) on the host, syncing a GPU each call. Both are
also timed with only `--few-present` of the 11 classes in the labels, where the dense form pays
for the absent classes; on a CPU host reads cost nothing, so this shows the price, not the gain.

    python benchmarks/reco_loss.py [--repeats 3] [--draws 30] [--few-present 6]
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
from losses.reco import (  # noqa: E402
    IGNORE_INDEX, ReCoIndices, _uniform_below, downsample_labels, reco_from_indices, reco_loss,
)

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


@torch.no_grad()
def _compact_indices(rep, label, prob, num_classes, temperature, num_queries, num_negatives,
                     strong_threshold, generator):
    """The previous sampler (present classes only; `nonzero`, `bincount` and `if` on label-dependent
    values: host reads), returning the new ReCoIndices with one row per class with queries."""
    dim = rep.shape[1]
    rep_flat = rep.detach().float().permute(0, 2, 3, 1).reshape(-1, dim)
    label_flat = label.reshape(-1)
    pixel_index = (label_flat != IGNORE_INDEX).nonzero().squeeze(1)
    pixel_class = label_flat[pixel_index]
    classes = torch.bincount(pixel_class, minlength=num_classes).nonzero().squeeze(1)
    num_present = classes.numel()
    if num_present < 2:
        return None
    slot_of_class = torch.full((num_classes,), -1, dtype=torch.long, device=label.device)
    slot_of_class[classes] = torch.arange(num_present, device=label.device)
    pixel_slot = slot_of_class[pixel_class]

    def sorted_by_slot(pixels, slots):
        count = torch.bincount(slots, minlength=num_present)
        return pixels[torch.argsort(slots, stable=True)], torch.cumsum(count, 0) - count, count

    pixels_by_slot, slot_start, slot_count = sorted_by_slot(pixel_index, pixel_slot)
    class_sum = torch.zeros(num_present, dim, device=rep.device).index_add_(0, pixel_slot, rep_flat[pixel_index])
    class_mean = class_sum / slot_count[:, None].float()
    prob_flat = prob.detach().float().permute(0, 2, 3, 1).reshape(-1, num_classes)
    is_hard = prob_flat[pixel_index, pixel_class] < strong_threshold
    hard_by_slot, hard_start, hard_count = sorted_by_slot(pixel_index[is_hard], pixel_slot[is_hard])
    query_slots = (hard_count > 0).nonzero().squeeze(1)
    if query_slots.numel() == 0:
        return None
    q_offset = _uniform_below(hard_count[query_slots][:, None].expand(-1, num_queries), generator)
    query_index = hard_by_slot[hard_start[query_slots][:, None] + q_offset]
    mean_unit = F.normalize(class_mean, dim=1)
    similarity = (mean_unit @ mean_unit.T) / temperature
    similarity.fill_diagonal_(float("-inf"))
    neg_slot = torch.multinomial(torch.softmax(similarity, dim=1)[query_slots], num_queries * num_negatives,
                                 replacement=True, generator=generator)
    negative_index = pixels_by_slot[slot_start[neg_slot] + _uniform_below(slot_count[neg_slot], generator)]
    return ReCoIndices(
        class_weight=torch.ones(len(query_slots), device=rep.device),
        num_present=torch.tensor(float(num_present), device=rep.device),
        positive_keys=class_mean[query_slots], query_index=query_index,
        negative_index=negative_index.view(-1, num_queries, num_negatives),
    )


def compact_host_reads_reco(rep, label, prob, num_classes, temperature, num_queries, num_negatives,
                            strong_threshold, generator=None):
    """Baseline: the previous sampler + the same Eqn. 1 as ours."""
    rep = rep.float()
    label = downsample_labels(label, rep.shape[-2:])
    indices = _compact_indices(rep, label, prob, num_classes, temperature, num_queries, num_negatives,
                               strong_threshold, generator)
    if indices is None:
        return rep.sum() * 0.0
    return reco_from_indices(rep, indices, temperature)


IMPLEMENTATIONS = {"ours": reco_loss, "compact_host_reads": compact_host_reads_reco,
                   "per_class_loop": per_class_loop_reco}



SIZE = (BATCH, REP_H, REP_W)  # images, representation height and width


def make_inputs(device, seed=0, present=NUM_CLASSES, size=SIZE):
    """Street-scene-like blocky labels at input size (5% ignore) using classes 0..present-1,
    probabilities at rep size with a mix of confident (easy) and unsure (hard) pixels, random
    representations. `size` = (images, rep height, rep width); the default is CamVid's."""
    batch, rep_h, rep_w = size
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, present, (batch, 1, 9, 12), generator=g).float()
    label = F.interpolate(cells, size=(rep_h * STRIDE, rep_w * STRIDE), mode="nearest")[:, 0].long()
    label[torch.rand(label.shape, generator=g) < 0.05] = IGNORE_INDEX
    small = downsample_labels(label, (rep_h, rep_w)).clamp(max=NUM_CLASSES - 1)
    logits = torch.randn(batch, NUM_CLASSES, rep_h, rep_w, generator=g) * 2
    logits += 7 * torch.rand(batch, 1, rep_h, rep_w, generator=g) * F.one_hot(small, NUM_CLASSES).permute(0, 3, 1, 2)
    prob = torch.softmax(logits, dim=1)
    rep = torch.randn(batch, DIM, rep_h, rep_w, generator=g)
    return rep.to(device).requires_grad_(True), label.to(device), prob.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward_backward(name, device, repeats, present=NUM_CLASSES, size=SIZE):
    rep, label, prob = make_inputs(device, present=present, size=size)
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
        print(f"{name:>18}: forward+backward {seconds:.3f} s (median of {args.repeats}), "
              f"peak extra memory {memory:.0f} MiB, losses {', '.join(f'{v:.4f}' for v in losses)}")
    few = {name: time_forward_backward(name, device, args.repeats, args.few_present)[0]
           for name in ("ours", "compact_host_reads")}
    print(f"{args.few_present} of {NUM_CLASSES} classes present: ours {few['ours']:.3f} s, "
          f"compact_host_reads {few['compact_host_reads']:.3f} s")
    print(f"dense / compact time: {timings['ours'] / timings['compact_host_reads']:.2f} (all present), "
          f"{few['ours'] / few['compact_host_reads']:.2f} ({args.few_present} present)")
    draws = mean_loss_over_draws(device, args.draws, args.agree_queries, args.agree_negatives)
    (m1, s1) = draws["ours"]
    for other in ("compact_host_reads", "per_class_loop"):
        m2, s2 = draws[other]
        print(f"mean loss over {args.draws} draws ({args.agree_queries} queries, {args.agree_negatives} "
              f"negatives): ours {m1:.4f} +- {s1:.4f}, {other} {m2:.4f} +- {s2:.4f}, "
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
    parser.add_argument("--few-present", type=int, default=6,
                        help="classes present in the second timing (the dense form's worst side)")
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
