"""Everything still to measure on a GPU, in one command that fits one call (<= 8 minutes on one GPU):

    python benchmarks/gpu_check.py OUT_DIR [--camvid data/camvid] [--lite0-weights FILE] [--budget-s 480]
    python benchmarks/gpu_check.py OUT_DIR --smoke      # every part on the CPU in seconds (CI)

Parts, in order, each stopped at its share of the time left (what it has is still written):
  speed       step time, images/s and peak memory of one config per paper config family, in bf16,
              in fp16 with the GradScaler (the V100 path) and in fp32, with a fits-16-GB verdict
              (benchmarks/config_speed.py's step on random tensors);
  host_syncs  host synchronisations per training step of the real trainer (engine/trainer.py,
              the demo's ReCo teacher on its synthetic images), counted from a torch.profiler
              trace (benchmarks/host_syncs.py), bf16 and fp16; expected 0 outside logging steps
              in bf16, 1 per step in fp16 (the GradScaler's check);
  reco        ReCo, the dense device-side sampler against the compact one with host reads
              (benchmarks/reco_loss.py), all classes present and 6 of 11;
  torchrun    `torchrun --nproc_per_node 1 train_al.py --config demo`: the whole pipeline in a
              process group (NCCL on CUDA, gloo on CPU), DDP and collectives included;
  camvid_row2 Table 1 CamVid row 2 at the paper's size with EfficientNet-Lite0 and its ImageNet
              weights, for the time left: images/s and the time the full row would take.

Writes OUT_DIR/gpu_check.json (after every part) and OUT_DIR/gpu_check.md (a block for
benchmarks/RESULTS.md: card, torch version, commit). Exit code 1 when a part failed (its error is
in both files), else 0. Runs go under OUT_DIR/work (--work-dir to put them elsewhere).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import host_syncs, reco_loss  # noqa: E402
from benchmarks.config_args import V100_MIB, largest_stage  # noqa: E402
from benchmarks.config_args import num_classes as config_num_classes  # noqa: E402
from benchmarks.config_speed import time_steps  # noqa: E402
from core.config import load_config  # noqa: E402
from core.distributed import DistContext  # noqa: E402
from models.build import make_model  # noqa: E402
from core.precision import configure_backends  # noqa: E402

# One config per family of the memory table in benchmarks/RESULTS.md (configs of a family share
# backbone, crop and per-GPU batch of their largest stage), and the CamVid row 2 of the last part.
FAMILIES = [
    ("Table S1, ResNet-101 deep stem OS8 (r101d_*)", "tableS1/r101d_186", []),
    ("Table S1, ResNet-50 OS8 (r50_*)", "tableS1/r50_100", []),
    ("EquAL Cityscapes, ResNet-50 OS8", "equal/cityscapes_r50", []),
    ("EquAL CamVid, ResNet-50 OS8", "equal/camvid_r50", []),
    ("Table 1 Cityscapes rows 4-9 (student 2+4)", "table1/cityscapes/row9", []),
    ("Table 1 Cityscapes rows 2-3 (teacher, rep head)", "table1/cityscapes/row2", []),
    ("Table 1 Cityscapes row 1, supervised/cityscapes_full", "table1/cityscapes/row1", []),
    ("Table 1 CamVid rows 4-6 (student 2+4)", "table1/camvid/row6", []),
    ("Table 1 CamVid rows 2-3 (teacher, rep head)", "table1/camvid/row2", []),
    ("Table 1 CamVid row 1, supervised/camvid_full", "table1/camvid/row1", []),
    ("Table 1 CamVid row 2, EfficientNet-Lite0", "table1/camvid/row2", ["model.backbone=efficientnet_lite0"]),
]
MODES = ("bf16", "fp16", "none")  # none = fp32
SHARES = {"speed": 0.30, "host_syncs": 0.10, "reco": 0.07, "torchrun": 0.18, "camvid_row2": 0.35}

# --smoke: the same parts, shrunk until each takes seconds on a CPU.
SMOKE_SPEED = ["data.crop_size=[16,24]", "loss.num_queries=8", "loss.num_negatives=16"]
SMOKE_ALL_MODES = "table1/camvid/row1"  # --smoke: fp16 is emulated on a CPU, so one family runs all modes
SMOKE_DEMO = ["data.synthetic={num_train: 8, num_val: 2, num_test: 1, height: 32, width: 48, seed: 0}",
              "data.crop_size=[32,48]", "data.workers=0", "model.rep_dim=8", "loss.num_queries=8",
              "loss.num_negatives=16", "stages.teacher.epochs=1", "stages.teacher.iters_per_epoch=2",
              "stages.student.epochs=1", "stages.student.iters_per_epoch=1", "stages.query1.epochs=1",
              "stages.query1.iters_per_epoch=1", "stages.query2=null", "runtime.checkpoint_every=null"]
SMOKE_ROW2 = ["data.dataset=synthetic", "data.resize=null", "data.crop_size=[32,48]", "data.workers=0",
              "data.synthetic={num_train: 8, num_val: 2, num_test: 1, height: 32, width: 48, seed: 0}",
              "model.rep_dim=8", "loss.num_queries=8", "loss.num_negatives=16",
              "stages.teacher.epochs=1", "stages.teacher.iters_per_epoch=3"]


class Clock:
    """The overall deadline, shared out over the parts not yet run in proportion to SHARES, so
    time a part leaves unused goes to the later ones (the last takes what is left)."""

    def __init__(self, budget_s: float, parts: list[str]):
        self.end = time.monotonic() + budget_s
        self.pending = list(parts)

    def start(self, part: str) -> float:
        """Deadline (time.monotonic) of `part`, which starts now."""
        weights = [SHARES[p] for p in self.pending]
        share = SHARES[part] / sum(weights)
        self.pending.remove(part)
        return time.monotonic() + max(0.0, self.end - time.monotonic()) * share

    @staticmethod
    def left(deadline: float) -> float:
        return deadline - time.monotonic()


# --------------------------------------------------------------------------- the parts
def part_speed(args, device, deadline: float) -> dict:
    rows, stopped = [], False
    for label, name, extra in FAMILIES:
        cfg = load_config(name, [*extra, *(SMOKE_SPEED if args.smoke else [])])
        stage_name, stage = largest_stage(cfg)
        row = {"family": label, "config": name, "overrides": extra, "stage": stage_name,
               "batch": [stage.batch_labeled, stage.batch_unlabeled], "crop": list(cfg.data.crop_size),
               "backbone": cfg.model.backbone, "modes": {}}
        rows.append(row)
        model = None
        for mode in MODES:
            if args.smoke and mode != "none" and (name != SMOKE_ALL_MODES or extra):
                row["modes"][mode] = "not measured: --smoke"
                continue
            if Clock.left(deadline) <= 0:
                row["modes"][mode], stopped = "not measured: time share spent", True
                continue
            if model is None:
                model = make_model(cfg.model, config_num_classes(cfg), rep_head=stage.reco, noise=stage.noise,
                                   pretrained="none")
            row["modes"][mode] = _measure(cfg, stage, device, mode, model, args)
        del model
    return {"status": "partial: time share spent" if stopped else "done", "rows": rows}


def _measure(cfg, stage, device, mode: str, model, args) -> dict | str:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        seconds, peak = time_steps(cfg, stage, device, mode, args.steps, args.warmup, model=model)
    except torch.cuda.OutOfMemoryError:
        return "out of memory"
    images = stage.batch_labeled + stage.batch_unlabeled
    out = {"step_s": seconds, "images_per_s": images / seconds, "peak_allocated_mib": peak}
    if device.type == "cuda":
        out["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
        out["fits_16gb"] = fits_16gb(out["peak_reserved_mib"], args.context_mib)
    return out


def fits_16gb(peak_reserved_mib: float, context_mib: float) -> bool:
    """What the allocator took from the card plus the CUDA context must fit a V100 16 GB."""
    return peak_reserved_mib + context_mib <= V100_MIB


def part_host_syncs(args, device, deadline: float) -> dict:
    from core.logger import RunLogger
    from al.checks import RunPlan
    from al.experiment import Experiment
    from engine.trainer import Trainer

    steps, log_every = (7, 3) if args.smoke else (40, 10)
    result = {"control_reads_per_step": host_syncs.control_reads_per_step(device)}
    for mode in ("bf16", "fp16"):
        if args.smoke and mode == "fp16":  # emulated on a CPU: minutes, and a trace of gigabytes
            result[mode] = "not measured: --smoke"
            continue
        if Clock.left(deadline) <= 0:
            result[mode] = "not measured: time share spent"
            continue
        out = args.work / f"host_syncs_{mode}"
        cfg = load_config("demo", [*demo_overrides(args, out), "stages.teacher.epochs=1",
                                   f"stages.teacher.iters_per_epoch={steps}", f"runtime.log_every={log_every}",
                                   "runtime.checkpoint_every=null", "runtime.checkpoint_minutes=1000"])
        ctx = DistContext(device=device)
        exp = Experiment(RunPlan(cfg, ctx, dry_run=False, overwrite=True))
        labeled_view, _ = exp.views(exp.initial_pool(), None, {})
        stage = cfg.stages["teacher"]
        model = make_model(cfg.model, exp.pool_src.num_classes, rep_head=stage.reco, noise=stage.noise, pretrained="none")
        out.mkdir(parents=True, exist_ok=True)
        logger = RunLogger(out, enabled=True)
        with torch.profiler.profile(activities=host_syncs.profiler_activities(device)) as prof:
            Trainer(model, stage=stage, stage_name="teacher", cfg=cfg, ctx=ctx, amp=mode, stage_dir=out / "stage",
                    logger=logger, seed=0).fit(labeled_view, None)
        logger.close()
        result[mode] = host_syncs.summarize(host_syncs.syncs_per_step(host_syncs.trace_events(prof)), log_every)
    spent = any(str(result[m]).endswith("time share spent") for m in ("bf16", "fp16"))
    return {"status": "partial: time share spent" if spent else "done", **result}


def part_reco(args, device, deadline: float) -> dict:
    size = (2, 12, 16) if args.smoke else reco_loss.SIZE
    repeats = 1 if args.smoke else 5
    rows, stopped = {}, False
    for present in (reco_loss.NUM_CLASSES, 6):
        for name in ("ours", "compact_host_reads"):
            key = f"{name}, {present} classes present"
            if Clock.left(deadline) <= 0:
                rows[key], stopped = "not measured: time share spent", True
                continue
            seconds, _ = reco_loss.time_forward_backward(name, device, repeats, present=present, size=size)
            rows[key] = {"forward_backward_s": seconds}
            if device.type == "cuda" and present == reco_loss.NUM_CLASSES:
                rows[key]["peak_extra_mib"] = reco_loss.peak_memory_mb(name, device)
    return {"status": "partial: time share spent" if stopped else "done", "size": list(size), "rows": rows}


def part_torchrun(args, device, deadline: float) -> dict:
    out = args.work / "demo_torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "train_al.py", "--config", "demo", "--overwrite", *demo_overrides(args, out)]
    run = run_until(cmd, deadline, args.work / "torchrun.log")
    summary = _read_json(out / "summary.json")
    stages = [{"name": s["name"], "miou": s["miou"], "labeled_pixel_pct": s["labeled_pixel_pct"],
               "wall_time_s": s["wall_time_s"]} for s in (summary or {}).get("stages", [])]
    log = (out / "log.txt").read_text() if (out / "log.txt").is_file() else ""
    backend = next((line.split("process group ")[1].split()[0].strip(",") for line in log.splitlines()
                    if "process group " in line), None)
    finished = bool(summary and summary.get("finished"))
    status = "done" if finished else ("partial: time share spent" if run["timed_out"] else
                                      f"error: exit code {run['returncode']} (log: {run['log']})")
    return {"status": status, "command": " ".join(cmd[2:]), **run, "backend": backend,
            "world_size": (summary or {}).get("world_size"), "stages": stages}


def part_camvid_row2(args, device, deadline: float) -> dict:
    out = args.work / "camvid_row2"
    overrides = ["model.backbone=efficientnet_lite0", f"model.pretrained={args.lite0_weights}",
                 f"output_dir={out}", f"runtime.device={device.type}", "runtime.checkpoint_every=100"]
    if args.smoke:
        overrides += [*SMOKE_ROW2, f"data.root={args.work / 'synthetic'}", "data.eval_split=val"]
    else:
        overrides += [f"data.root={args.camvid.resolve()}", f"data.eval_split={args.camvid_eval_split}"]
    cfg = load_config("table1/camvid/row2", overrides)
    cmd = [sys.executable, "train_al.py", "--config", "table1/camvid/row2", "--overwrite", *overrides]
    run = run_until(cmd, deadline, args.work / "camvid_row2.log")
    return {**row_progress(cfg, out, run), "command": " ".join(cmd[1:]), **run}


def row_progress(cfg, out: Path, run: dict) -> dict:
    """Images/s and the time the whole row would take, from a finished run's metrics.json or from
    the newest checkpoint (step, training seconds) of a run stopped at its deadline."""
    from core import checkpoint as ckpt
    name, stage = next(iter(cfg.stages.items()))
    total = stage.epochs * stage.iters_per_epoch
    per_step = stage.batch_labeled + stage.batch_unlabeled
    stage_dir = out / f"00_{name}"
    metrics = _read_json(stage_dir / "metrics.json")
    if metrics is not None:
        thr = metrics["train"]["throughput"]
        return {"status": "done", "steps_done": thr["steps"], "of_steps": total,
                "images_per_s": thr["images_per_s"], "train_s": thr["seconds"],
                "full_stage_train_s_estimate": thr["seconds"] / thr["steps"] * total,
                "miou": metrics["record"]["miou"]}
    state = ckpt.load_latest(stage_dir / "checkpoints", warn=print) if (stage_dir / "checkpoints").is_dir() else None
    if state is None:
        status = "partial: time share spent" if run["timed_out"] else f"error: exit code {run['returncode']}"
        return {"status": f"{status}; no checkpoint written, nothing measured (log: {run['log']})",
                "steps_done": 0, "of_steps": total}
    step, seconds = state["step"], state["train_time_s"]
    return {"status": "partial: time share spent" if run["timed_out"] else f"error: exit code {run['returncode']}",
            "steps_done": step, "of_steps": total, "images_per_s": step * per_step / seconds, "train_s": seconds,
            "full_stage_train_s_estimate": seconds / step * total}


# --------------------------------------------------------------------------- helpers
def demo_overrides(args, out: Path) -> list[str]:
    """The demo (EfficientNet-Lite0 from the ImageNet file --lite0-weights names) into `out`."""
    return [f"output_dir={out}", f"data.root={args.work / 'synthetic'}", f"runtime.device={args.device}",
            f"model.pretrained={args.lite0_weights}", *(SMOKE_DEMO if args.smoke else [])]


def run_until(cmd: list[str], deadline: float, log: Path) -> dict:
    """Run `cmd` in its own process group until it ends or the deadline passes (then SIGTERM, and
    SIGKILL 15 s later); its output goes to `log`."""
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, Clock.left(deadline)))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {"returncode": proc.returncode, "timed_out": timed_out, "wall_s": time.monotonic() - started,
            "log": str(log)}


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def describe_machine(device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "commit": commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, compute_capability=f"{props.major}.{props.minor}",
                    memory_mib=props.total_memory / 2**20, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        from al.rundir import describe_device
        info["card"] = describe_device(DistContext())
    return info


def commit() -> str:
    """HEAD's short hash, with '+ uncommitted changes' when the tree differs; 'unknown' without git."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "--short", "HEAD")
    except FileNotFoundError:
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + (" + uncommitted changes" if dirty else "")


def cuda_context_mib(device) -> float:
    """Card memory in use that the allocator does not account for (context, cuDNN/cuBLAS), after
    one convolution; added to every peak for the 16 GB verdict."""
    x = torch.nn.functional.conv2d(torch.ones(1, 3, 8, 8, device=device), torch.ones(4, 3, 3, 3, device=device))
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    del x
    return (total - free) / 2**20 - torch.cuda.memory_reserved(device) / 2**20


# --------------------------------------------------------------------------- report
def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    m, parts = result["machine"], result["parts"]
    lines = [f"### gpu_check: {m['card']}" + (f" (compute capability {m['compute_capability']})"
                                               if "compute_capability" in m else ""),
             "", f"`{result['command']}` on {m['date']}: torch {m['torch']}"
             + (f", CUDA {m['cuda']}, cuDNN {m['cudnn']}" if "cuda" in m else "")
             + f", commit {m['commit']}; {result['seconds']:.0f} s of a {result['budget_s']:.0f} s budget"
             + (" (**--smoke**: CPU, shrunk parts; the figures say nothing about a GPU)" if result["smoke"] else ""),
             ""]
    speed = parts.get("speed")
    if speed and "rows" in speed:
        lines += [f"**Step time per config family** ({speed['status']}; random tensors, largest stage, "
                  f"per-GPU batch; peak = max allocated / reserved MiB"
                  + (f"; fits 16 GB = reserved + {result.get('context_mib', 0):.0f} MiB context <= {V100_MIB} MiB"
                     if "context_mib" in result else "") + ")", "",
                  "| family | config | batch | crop | " + " | ".join(
                      f"{m_} s/step, img/s, peak, fits" for m_ in ("bf16", "fp16+GradScaler", "fp32")) + " |",
                  "|---|---|---|---|---|---|---|"]
        for r in speed["rows"]:
            cells = []
            for mode in MODES:
                v = r["modes"].get(mode)
                if isinstance(v, dict):
                    peak = f"{v['peak_allocated_mib']:.0f}" + (f"/{v['peak_reserved_mib']:.0f}" if "peak_reserved_mib" in v else "")
                    fits = {True: "yes", False: "**NO**"}.get(v.get("fits_16gb"), "-")
                    cells.append(f"{v['step_s']:.3f}, {v['images_per_s']:.1f}, {peak}, {fits}")
                else:
                    cells.append(str(v))
            lines.append(f"| {r['family']} | `{r['config']}`{' ' + ' '.join(r['overrides']) if r['overrides'] else ''} "
                         f"| {r['batch'][0]}+{r['batch'][1]} | {r['crop'][0]}x{r['crop'][1]} | " + " | ".join(cells) + " |")
        lines.append("")
    hs = parts.get("host_syncs")
    if hs and "control_reads_per_step" in hs:
        lines += [f"**Host synchronisations per training step** ({hs['status']}; the trainer's demo teacher "
                  f"with ReCo, torch.profiler; control loop with one `.item()` per step: "
                  f"{hs['control_reads_per_step']:.2f} counted per step"
                  + ("; on a CPU 1 read per step is expected: ReCo checks its labels on the host there, "
                     "with a device-side assert on CUDA" if m["device"] == "cpu" else
                     "; expected: 0 outside logging steps in bf16, 1 per step in fp16 (GradScaler)") + ")", "",
                  "| amp | steps (log_every) | outside logging steps: max, mean | logging steps: mean | by name |",
                  "|---|---|---|---|---|"]
        for mode in ("bf16", "fp16"):
            v = hs.get(mode)
            if isinstance(v, dict):
                lines.append(f"| {mode} | {v['steps']} ({v['log_every']}) | {_fmt(v['non_logging']['max'], 'd')}, "
                             f"{_fmt(v['non_logging']['mean'], '.2f')} | {_fmt(v['logging']['mean'], '.2f')} | "
                             f"{', '.join(f'{k} {n}' for k, n in sorted(v['by_name'].items())) or 'none'} |")
            else:
                lines.append(f"| {mode} | {v} | | | |")
        lines.append("")
    reco = parts.get("reco")
    if reco and "rows" in reco:
        lines += [f"**ReCo sampler** ({reco['status']}; rep {reco['size'][0]}x256x{reco['size'][1]}x{reco['size'][2]}, "
                  f"forward+backward, median)", ""]
        for key, v in reco["rows"].items():
            lines.append(f"- {key}: " + (f"{v['forward_backward_s'] * 1e3:.1f} ms"
                                         + (f", peak extra {v['peak_extra_mib']:.0f} MiB" if "peak_extra_mib" in v else "")
                                         if isinstance(v, dict) else str(v)))
        lines.append("")
    tr = parts.get("torchrun")
    if tr and "returncode" in tr:
        lines += [f"**`{tr['command']}`** ({tr['status']}): backend {tr['backend']}, world size {tr['world_size']}, "
                  f"{tr['wall_s']:.0f} s; " + ", ".join(f"{s['name']} {s['miou']:.2f} mIoU at {s['labeled_pixel_pct']:.2f}%"
                                                     for s in tr["stages"]), ""]
    row = parts.get("camvid_row2")
    if row and "of_steps" in row:
        line = f"**CamVid row 2, EfficientNet-Lite0 ImageNet, full size** ({row['status']}): {row['steps_done']} of {row['of_steps']} steps"
        if "images_per_s" in row:
            line += (f", {row['images_per_s']:.1f} images/s, training time of the full row "
                     f"{row['full_stage_train_s_estimate'] / 60:.1f} min (evaluations included as configured, "
                     f"start-up and the final evaluation not)")
        if "miou" in row:
            line += f", mIoU {row['miou']:.2f}"
        lines += [line, ""]
    for name, part in parts.items():
        if part.get("status", "").startswith("error"):
            lines += [f"**{name} failed**: {part['status']}", "", "```", part.get("traceback", "").strip()[-1500:], "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
PARTS = {"speed": part_speed, "host_syncs": part_host_syncs, "reco": part_reco, "torchrun": part_torchrun,
         "camvid_row2": part_camvid_row2}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU, shrunk to seconds (CI)")
    parser.add_argument("--budget-s", type=float, default=None, help="whole run (default 480; --smoke 300)")
    parser.add_argument("--only", action="append", choices=list(PARTS), help="run only these parts (repeatable)")
    parser.add_argument("--camvid", type=Path, default=Path("data/camvid"), help="CamVid folder (SegNet layout)")
    parser.add_argument("--camvid-eval-split", default="val", help="val (train/val copies) or test")
    parser.add_argument("--lite0-weights", default="imagenet",
                        help="model.pretrained for EfficientNet-Lite0: 'imagenet' (the pip package's file) or a path")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the runs go (default OUT_DIR/work)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per speed measurement (4; --smoke 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (2; --smoke 1)")
    args = parser.parse_args(argv)
    args.budget_s = args.budget_s if args.budget_s is not None else (300.0 if args.smoke else 480.0)
    args.steps = args.steps or (1 if args.smoke else 4)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    args.work = (args.work_dir or args.out_dir / "work").resolve()
    if args.lite0_weights != "imagenet":  # a file: the runs start in the repository root
        args.lite0_weights = str(Path(args.lite0_weights).resolve())
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run it on a GPU machine, or pass --smoke for the CPU check")
    if not args.smoke and "camvid_row2" in (args.only or PARTS) and not args.camvid.is_dir():
        parser.error(f"--camvid {args.camvid}: no such folder (the CamVid SegNet release; see README, "
                     f"'A GPU check in one command')")
    args.device = "cpu" if args.smoke else "cuda"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    configure_backends(device, deterministic=False)  # cuDNN autotuning and TF32, as a run has them
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    names = args.only or list(PARTS)
    result = {"command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "smoke": args.smoke, "budget_s": args.budget_s, "machine": describe_machine(device), "parts": {}}
    if device.type == "cuda":
        result["context_mib"] = args.context_mib = cuda_context_mib(device)
    else:
        args.context_mib = 0.0
    clock = Clock(args.budget_s, names)
    failed = False
    for name in names:
        deadline = clock.start(name)
        t0 = time.monotonic()
        print(f"--- {name} ({max(0.0, Clock.left(deadline)):.0f} s)", flush=True)
        if Clock.left(deadline) <= 0:
            part = {"status": "not run: time share spent"}
        else:
            try:
                part = PARTS[name](args, device, deadline)
            except Exception as err:  # recorded in both files, printed, and the exit code says so
                failed = True
                part = {"status": f"error: {type(err).__name__}: {err}", "traceback": traceback.format_exc()}
                print(part["traceback"], file=sys.stderr, flush=True)
        part["seconds"] = time.monotonic() - t0
        result["parts"][name] = part
        result["seconds"] = time.monotonic() - started
        write_outputs(args.out_dir, result)
        print(f"    {part['status']} in {part['seconds']:.1f} s", flush=True)
    print(markdown(result))
    return 1 if failed else 0


def write_outputs(out_dir: Path, result: dict) -> None:
    """Both files replaced atomically, so a run killed mid-way leaves the last complete pair."""
    for name, text in (("gpu_check.json", json.dumps(result, indent=1, default=str)),
                       ("gpu_check.md", markdown(result))):
        with tempfile.NamedTemporaryFile("w", dir=out_dir, delete=False, suffix=".tmp") as f:
            f.write(text + "\n")
        os.replace(f.name, out_dir / name)


if __name__ == "__main__":
    sys.exit(main())
