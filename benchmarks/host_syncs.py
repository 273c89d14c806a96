"""Host synchronisations per training step, counted from a torch.profiler trace.

A step is the time from one `optimizer.zero_grad()` to the next (torch's optimizers mark every
call with a `Optimizer.zero_grad#<Class>.zero_grad` profiler range). Inside each step we count

  * `aten::_local_scalar_dense`: a tensor value read by the host (`.item()`, `int(t)`, `if t:`,
    GradScaler's inf check); on CUDA it waits for the device;
  * the CUDA runtime calls that block the host until the device is done: cudaStreamSynchronize,
    cudaDeviceSynchronize, cudaEventSynchronize and the blocking cudaMemcpy (a `.tolist()` /
    `.cpu()` of a CUDA tensor shows as a copy followed by cudaStreamSynchronize).

engine/trainer.py promises none of these in a step except every `runtime.log_every` steps (fp16's
GradScaler adds one read per step). `control_reads_per_step` runs the same counter on a loop that
reads one value per step, so a count of 0 cannot come from a counter that sees nothing.
"""
from __future__ import annotations

import json
import os
import tempfile
from bisect import bisect_right
from collections import Counter

import torch

STEP_MARK = "Optimizer.zero_grad#"
HOST_READ = "aten::_local_scalar_dense"
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
COUNTED = (HOST_READ, *CUDA_SYNCS)


def trace_events(prof) -> list[tuple[str, float]]:
    """(name, start in µs) of every event of a finished torch.profiler.profile, read from its
    Chrome trace (prof.events() builds a Python object tree and takes minutes on a long trace)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    return [(e["name"], float(e["ts"])) for e in trace["traceEvents"] if e.get("ph") == "X" and "name" in e]


def syncs_per_step(events) -> list[Counter]:
    """One Counter per step ({event name: count} over COUNTED) from (name, start) events.
    Events before the first step are not counted; the last step runs to the end of the trace."""
    marks = sorted(start for name, start in events if name.startswith(STEP_MARK))
    steps = [Counter() for _ in marks]
    for name, start in events:
        if name in COUNTED:
            i = bisect_right(marks, start) - 1
            if i >= 0:
                steps[i][name] += 1
    return steps


def summarize(steps: list[Counter], log_every: int, warmup: int = 2) -> dict:
    """Counts per step split into logging steps (step index i with (i + 1) % log_every == 0, when
    the trainer reads its losses back) and the others. The first `warmup` steps (cuDNN autotuning)
    and the last one (it ends the stage: checkpoint, weights) are reported, not judged."""
    judged = range(warmup, len(steps) - 1)
    logging = [i for i in judged if (i + 1) % log_every == 0]
    others = [i for i in judged if (i + 1) % log_every != 0]

    def total(i: int, names=COUNTED) -> int:
        return sum(steps[i][n] for n in names)

    def stats(indices: list[int]) -> dict:
        values = [total(i) for i in indices]
        return {"steps": len(values), "max": max(values, default=None),
                "mean": sum(values) / len(values) if values else None,
                "host_reads_mean": (sum(steps[i][HOST_READ] for i in indices) / len(indices)) if indices else None,
                "cuda_syncs_mean": (sum(total(i, CUDA_SYNCS) for i in indices) / len(indices)) if indices else None}

    by_name = Counter()
    for i in judged:
        by_name.update(steps[i])
    return {"steps": len(steps), "log_every": log_every, "warmup_steps": warmup,
            "per_step": [total(i) for i in range(len(steps))],
            "non_logging": stats(others), "logging": stats(logging), "by_name": dict(by_name)}


def control_reads_per_step(device: torch.device, steps: int = 6) -> float:
    """Mean counted events per step of a loop that reads one value back per step (expected >= 1)."""
    weight = torch.zeros(4, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    with torch.profiler.profile(activities=profiler_activities(device)) as prof:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = (weight - 1).square().sum()
            loss.backward()
            optimizer.step()
            loss.item()  # the one read per step
    counts = syncs_per_step(trace_events(prof))
    return sum(sum(c[n] for n in COUNTED) for c in counts) / len(counts)


def profiler_activities(device: torch.device) -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities
