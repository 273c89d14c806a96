"""One training phase: `epochs x iters_per_epoch` SGD steps on labeled (+ pseudo-labeled) batches,
CE + lambda * ReCo, poly learning rate, AMP, DDP, resumable at every checkpoint.

What a step computes, for B_l labeled and B_u pseudo-labeled images:
    logits, rep, coarse = model(cat(x_l, x_u))
    loss = CE(logits_l, y_l) + w_u * CE(logits_u, y_u) + w_reco * ReCo(rep, cat(y_l, y_u), softmax(coarse))
`coarse` are the classifier's logits at the representation's resolution (stride 4), as in ReCo.

Noise. Every rank seeds its own stream for dropout / stochastic depth (`seed_rank_noise`), so
4 GPUs draw 4 different masks per step instead of one mask copied 4 times. What must agree
still does: the initial weights (drawn before the per-rank seeding, and DDP broadcasts rank 0's
anyway), the batches (a pure function of seed and step, engine/data.py) and the weights after
every step (DDP all-reduces the gradients). Each rank's RNG state is in every checkpoint, so a
resumed run draws exactly the masks an uninterrupted one would have.

Host reads (device -> host synchronisations) per step, on CUDA:
  * none in the default `runtime.nonfinite: stop` mode with bf16 / fp32: batches are pinned and
    copied with non_blocking=True, concatenated and normalised on the device (uint8 on the wire);
    ReCo samples on the device (losses/reco.py); the learning rate is computed on the host;
    the first non-finite step and the loss terms are recorded in device tensors.
  * one every `runtime.log_every` steps (`_Monitor.check`): the loss terms for the log, the first
    non-finite step since the last check, and rank 0's checkpoint clock, in one small tensor and
    one all-reduce. A non-finite loss can therefore reach the weights for up to log_every - 1
    steps before it is seen; the run then stops naming that step, and no checkpoint is ever
    written after a non-finite step (a check always precedes a save), so the last checkpoint is
    good and is the one the error names.
  * `runtime.nonfinite: skip` adds one read per step: whether the loss is finite must be known
    before `optimizer.step()` to skip it.
  * fp16 (GradScaler) adds one read per step inside `scaler.step` (its inf check): the price of
    fp16, which auto picks only on cards without native bf16 (core/precision.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.transforms import normalize_images
from core import checkpoint as ckpt
from core import distributed as dist_utils
from core import faults
from engine.data import stream_loader
from engine.optim import make_optimizer, set_poly_lr
from engine.parallel import unwrap, wrap_model
from core.precision import autocast
from core.errors import NonFiniteLoss, RunInputError
from losses.ce import masked_cross_entropy
from losses.reco import reco_loss




def seed_rank_noise(seed: int, rank: int) -> None:
    """Seed the global torch RNG (dropout, stochastic depth) for this stage and rank."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1)[0]))


def _batches(loader):
    """An iterator over a loader that may be None (a stage without pseudo-labeled images)."""
    if loader is None:
        return iter(lambda: None, object())  # endless Nones
    return iter(loader)


def to_device(batch_l: dict, batch_u: dict | None, device, channels_last: bool):
    """uint8 pinned batches -> normalised float images (channels_last if asked) and int64 labels
    on the device. Each batch is copied on its own (non-blocking from pinned memory) and the
    concatenation happens on the device: a host-side cat would produce a pageable tensor whose
    copy blocks."""
    parts = [batch_l] if batch_u is None else [batch_l, batch_u]
    images = torch.cat([p["image"].to(device, non_blocking=True) for p in parts])
    labels = torch.cat([p["label"].to(device, non_blocking=True) for p in parts]).long()
    images = normalize_images(images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def step_loss(model, images, labels, num_labeled: int, *, reco: bool, loss_cfg, amp: str, generator):
    """(total loss, {term: value}) of one step; the first `num_labeled` images are the labeled ones.

    total = CE(labeled) + loss.unlabeled_weight * CE(pseudo-labeled) + loss.reco_weight * ReCo.
    """
    with autocast(images.device, amp):
        if reco:
            logits, rep, coarse = model(images, return_rep=True)
        else:
            logits, rep, coarse = model(images), None, None
    parts = {"ce_labeled": masked_cross_entropy(logits[:num_labeled], labels[:num_labeled])}
    loss = parts["ce_labeled"]
    if num_labeled < images.shape[0]:
        parts["ce_unlabeled"] = masked_cross_entropy(logits[num_labeled:], labels[num_labeled:])
        loss = loss + loss_cfg.unlabeled_weight * parts["ce_unlabeled"]
    if rep is not None:
        prob = coarse.detach().float().softmax(dim=1)  # ReCo's hard queries: stride-4 predictions
        parts["reco"] = reco_loss(rep, labels, prob, num_classes=logits.shape[1],
                                  temperature=loss_cfg.temperature, num_queries=loss_cfg.num_queries,
                                  num_negatives=loss_cfg.num_negatives,
                                  strong_threshold=loss_cfg.strong_threshold, generator=generator)
        loss = loss + loss_cfg.reco_weight * parts["reco"]
    parts["total"] = loss
    return loss, parts


class _Monitor:
    """Device-side record of the loss terms and of the first non-finite step, read back (one
    host read + one all-reduce) only when `check` is called."""

    NONE = -1

    def __init__(self, device):
        self.device = device
        self.first_bad = torch.full((), self.NONE, dtype=torch.int64, device=device)
        self.parts: dict = {}

    def record(self, step: int, parts: dict) -> None:
        total = parts["total"].detach()
        bad = ~torch.isfinite(total) & (self.first_bad == self.NONE)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.parts = {k: v.detach().float() for k, v in parts.items()}

    def check(self, ctx, clock_due: bool) -> tuple[int | None, bool, dict]:
        """(first non-finite step on any rank or None, rank 0's clock_due, last loss terms)."""
        names = list(self.parts)
        values = torch.stack([self.parts[k] for k in names]) if names else torch.zeros(0, device=self.device)
        flags = torch.stack([(self.first_bad != self.NONE).float(),
                             torch.full((), float(clock_due), device=self.device)])
        if ctx.distributed:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        host = torch.cat([flags, values]).tolist()  # the one host read
        first_bad = None
        if host[0] > 0:  # rare: a second collective finds the earliest bad step over the ranks
            mine = self.first_bad if int(self.first_bad) != self.NONE else torch.full_like(self.first_bad, 2**62)
            if ctx.distributed:
                torch.distributed.all_reduce(mine, op=torch.distributed.ReduceOp.MIN)
            first_bad = int(mine)
        return first_bad, host[1] > 0, dict(zip(names, host[2:]))


def train_phase(model, *, stage, stage_name: str, cfg, ctx, amp: str, labeled_view, unlabeled_view,
                stage_dir: Path, logger, seed: int, evaluate_fn=None) -> dict:
    """Train `model` in place for one stage; resumes from `stage_dir/checkpoints` if present.

    evaluate_fn(model) -> metrics dict, called every `stage.eval_every` epochs (all ranks).
    Returns {"best_miou", "evals", "skipped_steps", "train_time_s", "throughput"}.
    """
    device, rt = ctx.device, cfg.runtime
    total = stage.epochs * stage.iters_per_epoch
    model.to(device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    net = wrap_model(model, ctx, cfg.model.sync_bn)  # before the optimizer: SyncBN swaps modules
    model = unwrap(net)
    optimizer = make_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1009 + ctx.rank)
    ckpt_dir = stage_dir / "checkpoints"

    start, best, evals, skipped, train_time = 0, None, [], 0, 0.0
    state = ckpt.load_latest(ckpt_dir, warn=logger.log)
    if state is not None:
        if len(state["rng"]) != ctx.world_size:  # each rank's RNG streams: a stage cannot change it midway
            raise RunInputError(f"{ckpt_dir}: stage {stage_name!r} was started with {len(state['rng'])} "
                                f"processes, this run has {ctx.world_size}; resume it with the same world size, "
                                f"or delete {ckpt_dir} to restart the stage (finished stages are kept)")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"][ctx.rank])
        start, best, evals = state["step"], state["best_miou"], state["evals"]
        skipped, train_time = state["skipped_steps"], state["train_time_s"]
        logger.log(f"[{stage_name}] resuming at step {start}/{total}")

    workers = cfg.data.workers
    loader_l = stream_loader(labeled_view, stage.batch_labeled, seed * 2, start, total, ctx, workers)
    loader_u = None
    if stage.batch_unlabeled and unlabeled_view is not None and len(unlabeled_view):
        loader_u = stream_loader(unlabeled_view, stage.batch_unlabeled, seed * 2 + 1, start, total, ctx, workers)

    last_save = time.time()

    def save_state(step):
        nonlocal last_save
        # Every rank's RNG/generator state is gathered so each resumes its own stream of noise.
        rngs = dist_utils.all_gather_objects(ckpt.rng_state(), ctx)
        gens = dist_utils.all_gather_objects(generator.get_state().cpu(), ctx)
        if ctx.is_main:
            ckpt.save_step(ckpt_dir, step, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "generator": gens, "rng": rngs, "step": step,
                "best_miou": best, "evals": evals, "skipped_steps": skipped,
                "train_time_s": train_time + (time.time() - t0)})
        dist_utils.barrier(ctx)
        last_save = time.time()

    # Creating a loader iterator draws from the global torch RNG; seed (or restore) the noise
    # stream after that, so dropout / stochastic depth continue exactly as they would have.
    batches_l, batches_u = iter(loader_l), _batches(loader_u)
    if state is not None:
        ckpt.set_rng_state(state["rng"][ctx.rank])
    else:
        seed_rank_noise(seed, ctx.rank)
    net.train()
    monitor = _Monitor(device)
    bar = tqdm(total=total, initial=start, desc=stage_name, disable=not ctx.is_main, dynamic_ncols=True)
    t0 = time.time()
    data_wait = 0.0  # time this process spent waiting for batches: is the device left idle?
    eval_period = stage.eval_every * stage.iters_per_epoch
    for step in range(start, total):
        t_fetch = time.perf_counter()
        batch_l, batch_u = next(batches_l), next(batches_u)
        data_wait += time.perf_counter() - t_fetch
        lr = set_poly_lr(optimizer, step, total, cfg.optim.poly_power)
        try:
            images, labels = to_device(batch_l, batch_u, device, rt.channels_last)
            loss, parts = step_loss(net, images, labels, batch_l["image"].shape[0], reco=stage.reco,
                                    loss_cfg=cfg.loss, amp=amp, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            if rt.nonfinite == "skip" and dist_utils.any_rank(not torch.isfinite(loss).item(), ctx):
                skipped += 1
                logger.log(f"[{stage_name}] step {step}: non-finite loss, step skipped ({skipped} so far)")
            else:
                scaler.scale(loss).backward()
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                monitor.record(step, parts)
        except torch.cuda.OutOfMemoryError as err:
            raise RuntimeError(
                f"CUDA out of memory in stage {stage_name!r} at step {step} with batch "
                f"{stage.batch_labeled}+{stage.batch_unlabeled} per GPU and crop {cfg.data.crop_size}: "
                f"reduce stages.{stage_name}.batch_labeled/batch_unlabeled or data.crop_size, or use "
                f"runtime.amp=bf16") from err
        done = step + 1
        bar.update(1)
        faults.reached("train_step")
        eval_due = evaluate_fn is not None and eval_period and done % eval_period == 0 and done < total
        steps_due = rt.checkpoint_every is not None and done % rt.checkpoint_every == 0
        if done % rt.log_every == 0 or done == total or eval_due or steps_due:
            clock_due = ctx.is_main and time.time() - last_save >= 60 * rt.checkpoint_minutes
            first_bad, clock_due, values = monitor.check(ctx, clock_due)
            if first_bad is not None:
                last = ckpt.step_checkpoints(ckpt_dir)
                where = f"last good checkpoint: {last[0][1]}" if last else "no checkpoint saved yet"
                raise NonFiniteLoss(f"non-finite loss at step {first_bad} of stage {stage_name!r}; {where} "
                                    f"(set runtime.nonfinite=skip to skip such steps)")
            if values:
                scalars = {f"{stage_name}/loss_{k}": v for k, v in values.items()}
                scalars[f"{stage_name}/lr"] = lr
                scalars[f"{stage_name}/data_wait_fraction"] = data_wait / max(time.time() - t0, 1e-9)
                logger.scalars(scalars, done)
                bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{lr:.2e}")
            if eval_due:
                metrics = evaluate_fn(model)
                evals.append({"step": done, "miou": metrics["miou"]})
                logger.scalars({f"{stage_name}/miou": metrics["miou"]}, done)
                if best is None or metrics["miou"] > best:
                    best = metrics["miou"]
                    if ctx.is_main:
                        ckpt.save_verified({"model": model.state_dict(), "step": done, "miou": best},
                                           stage_dir / "best.pth")
                net.train()
            if steps_due or clock_due or done == total:
                save_state(done)
    bar.close()
    # DDP broadcasts BatchNorm statistics from rank 0 at the start of each forward, so after the
    # last step every rank holds its own: make them rank 0's, as every checkpoint already is.
    dist_utils.broadcast_buffers(model, ctx)
    elapsed = time.time() - t0
    train_time += elapsed
    # Throughput of this process's share of the stage (a resumed stage: since the resume).
    images = (total - start) * (stage.batch_labeled + stage.batch_unlabeled) * ctx.world_size
    throughput = {"steps": total - start, "seconds": elapsed,
                  "images_per_s": images / elapsed if elapsed > 0 else None,
                  "data_wait_fraction": data_wait / elapsed if elapsed > 0 else None}
    if total > start:
        logger.log(f"[{stage_name}] {throughput['images_per_s']:.2f} images/s over {total - start} steps "
                   f"({ctx.world_size} process(es)), {100 * throughput['data_wait_fraction']:.1f}% of the "
                   f"time waiting for data")
    return {"best_miou": best, "evals": evals, "skipped_steps": skipped, "train_time_s": train_time,
            "throughput": throughput}
