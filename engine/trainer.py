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
from losses.objective import objective




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
    """(total loss, {term: value}) of one step: the forward pass under autocast, then the
    objective (losses/objective.py); the first `num_labeled` images are the labeled ones."""
    with autocast(images.device, amp):
        if reco:
            logits, rep, coarse = model(images, return_rep=True)
        else:
            logits, rep, coarse = model(images), None, None
    return objective(logits, labels, num_labeled, loss_cfg, rep=rep, coarse=coarse, generator=generator)


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


class Trainer:
    """One stage's training of `model` in place: `restore` (the stage's newest checkpoint, or a
    fresh start), then `step` for every optimizer step and `periodic` after it (loss read-back,
    non-finite check, evaluation every `stage.eval_every` epochs, checkpoints), then `finish`.
    `fit` runs that loop. It reads the config's runtime, optim and loss sections, data.workers,
    data.crop_size (for the out-of-memory message) and model.sync_bn."""

    def __init__(self, model, *, stage, stage_name: str, cfg, ctx, amp: str, stage_dir: Path, logger, seed: int):
        self.stage, self.name, self.cfg, self.ctx, self.amp, self.logger, self.seed = \
            stage, stage_name, cfg, ctx, amp, logger, seed
        self.rt, self.total = cfg.runtime, stage.epochs * stage.iters_per_epoch
        self.stage_dir, self.ckpt_dir = stage_dir, stage_dir / "checkpoints"
        model.to(ctx.device)
        if self.rt.channels_last:
            model.to(memory_format=torch.channels_last)
        self.net = wrap_model(model, ctx, cfg.model.sync_bn)  # before the optimizer: SyncBN swaps modules
        self.model = unwrap(self.net)
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp == "fp16")
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(seed * 1009 + ctx.rank)
        self.start, self.best, self.evals, self.skipped, self.train_time = 0, None, [], 0, 0.0
        self._restored = None

    # ------------------------------------------------------------------ restore
    def restore(self, labeled_view, unlabeled_view) -> int:
        """Resume from the newest step checkpoint (if any), open the batch streams at that step
        and set the noise stream; returns the first step to run."""
        ctx = self.ctx
        state = ckpt.load_latest(self.ckpt_dir, warn=self.logger.log)
        if state is not None:
            if len(state["rng"]) != ctx.world_size:  # each rank's RNG streams: a stage cannot change it midway
                raise RunInputError(f"{self.ckpt_dir}: stage {self.name!r} was started with {len(state['rng'])} "
                                    f"processes, this run has {ctx.world_size}; resume it with the same world "
                                    f"size, or delete {self.ckpt_dir} to restart the stage (finished stages are kept)")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.generator.set_state(state["generator"][ctx.rank])
            self.start, self.best, self.evals = state["step"], state["best_miou"], state["evals"]
            self.skipped, self.train_time = state["skipped_steps"], state["train_time_s"]
            self.logger.log(f"[{self.name}] resuming at step {self.start}/{self.total}")
        stage, workers = self.stage, self.cfg.data.workers
        loader_l = stream_loader(labeled_view, stage.batch_labeled, self.seed * 2, self.start, self.total, ctx, workers)
        loader_u = None
        if stage.batch_unlabeled and unlabeled_view is not None and len(unlabeled_view):
            loader_u = stream_loader(unlabeled_view, stage.batch_unlabeled, self.seed * 2 + 1, self.start, self.total,
                                     ctx, workers)
        # Creating a loader iterator draws from the global torch RNG; seed (or restore) the noise
        # stream after that, so dropout / stochastic depth continue exactly as they would have.
        self.batches_l, self.batches_u = iter(loader_l), _batches(loader_u)
        if state is not None:
            ckpt.set_rng_state(state["rng"][ctx.rank])
        else:
            seed_rank_noise(self.seed, ctx.rank)
        self.net.train()
        self.monitor = _Monitor(ctx.device)
        self.t0 = self.last_save = time.time()
        self.data_wait = 0.0  # time this process spent waiting for batches: is the device left idle?
        return self.start

    # ------------------------------------------------------------------ step
    def step(self, step: int) -> float:
        """One optimizer step on the next batches; returns its learning rate."""
        stage, rt = self.stage, self.rt
        t_fetch = time.perf_counter()
        batch_l, batch_u = next(self.batches_l), next(self.batches_u)
        self.data_wait += time.perf_counter() - t_fetch
        lr = set_poly_lr(self.optimizer, step, self.total, self.cfg.optim.poly_power)
        try:
            images, labels = to_device(batch_l, batch_u, self.ctx.device, rt.channels_last)
            loss, parts = step_loss(self.net, images, labels, batch_l["image"].shape[0], reco=stage.reco,
                                    loss_cfg=self.cfg.loss, amp=self.amp, generator=self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            if rt.nonfinite == "skip" and dist_utils.any_rank(not torch.isfinite(loss).item(), self.ctx):
                self.skipped += 1
                self.logger.log(f"[{self.name}] step {step}: non-finite loss, step skipped ({self.skipped} so far)")
            else:
                self.scaler.scale(loss).backward()
                if self.cfg.optim.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.monitor.record(step, parts)
        except torch.cuda.OutOfMemoryError as err:
            raise RuntimeError(
                f"CUDA out of memory in stage {self.name!r} at step {step} with batch "
                f"{stage.batch_labeled}+{stage.batch_unlabeled} per GPU and crop {self.cfg.data.crop_size}: "
                f"reduce stages.{self.name}.batch_labeled/batch_unlabeled or data.crop_size, or use "
                f"runtime.amp=bf16") from err
        return lr

    # ------------------------------------------------------------------ periodic
    def periodic(self, done: int, lr: float, evaluate_fn=None) -> None:
        """After step `done`: every `log_every` steps (and before any evaluation or checkpoint) the
        one host read of the loss terms and the non-finite check; then the evaluation and the
        checkpoint when due. A checkpoint is never written after a non-finite step."""
        rt, stage, ctx = self.rt, self.stage, self.ctx
        eval_period = stage.eval_every * stage.iters_per_epoch
        eval_due = evaluate_fn is not None and eval_period and done % eval_period == 0 and done < self.total
        steps_due = rt.checkpoint_every is not None and done % rt.checkpoint_every == 0
        if not (done % rt.log_every == 0 or done == self.total or eval_due or steps_due):
            return
        clock_due = ctx.is_main and time.time() - self.last_save >= 60 * rt.checkpoint_minutes
        first_bad, clock_due, values = self.monitor.check(ctx, clock_due)
        if first_bad is not None:
            last = ckpt.step_checkpoints(self.ckpt_dir)
            where = f"last good checkpoint: {last[0][1]}" if last else "no checkpoint saved yet"
            raise NonFiniteLoss(f"non-finite loss at step {first_bad} of stage {self.name!r}; {where} "
                                f"(set runtime.nonfinite=skip to skip such steps)")
        if values:
            scalars = {f"{self.name}/loss_{k}": v for k, v in values.items()}
            scalars[f"{self.name}/lr"] = lr
            scalars[f"{self.name}/data_wait_fraction"] = self.data_wait / max(time.time() - self.t0, 1e-9)
            self.logger.scalars(scalars, done)
            self.bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{lr:.2e}")
        if eval_due:
            self._evaluate(done, evaluate_fn)
        if steps_due or clock_due or done == self.total:
            self.save(done)

    def _evaluate(self, done: int, evaluate_fn) -> None:
        metrics = evaluate_fn(self.model)
        self.evals.append({"step": done, "miou": metrics["miou"]})
        self.logger.scalars({f"{self.name}/miou": metrics["miou"]}, done)
        if self.best is None or metrics["miou"] > self.best:
            self.best = metrics["miou"]
            if self.ctx.is_main:
                ckpt.save_verified({"model": self.model.state_dict(), "step": done, "miou": self.best},
                                   self.stage_dir / "best.pth")
        self.net.train()

    def save(self, step: int) -> None:
        """A step checkpoint; every rank's RNG / generator state is gathered so each resumes its
        own stream of noise."""
        ctx = self.ctx
        rngs = dist_utils.all_gather_objects(ckpt.rng_state(), ctx)
        gens = dist_utils.all_gather_objects(self.generator.get_state().cpu(), ctx)
        if ctx.is_main:
            ckpt.save_step(self.ckpt_dir, step, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "generator": gens, "rng": rngs, "step": step,
                "best_miou": self.best, "evals": self.evals, "skipped_steps": self.skipped,
                "train_time_s": self.train_time + (time.time() - self.t0)})
        dist_utils.barrier(ctx)
        self.last_save = time.time()

    # ------------------------------------------------------------------ finish
    def finish(self) -> dict:
        """Rank 0's BatchNorm statistics everywhere; {"best_miou", "evals", "skipped_steps",
        "train_time_s", "throughput"}."""
        ctx, total, start = self.ctx, self.total, self.start
        # DDP broadcasts BatchNorm statistics from rank 0 at the start of each forward, so after the
        # last step every rank holds its own: make them rank 0's, as every checkpoint already is.
        dist_utils.broadcast_buffers(self.model, ctx)
        elapsed = time.time() - self.t0
        self.train_time += elapsed
        # Throughput of this process's share of the stage (a resumed stage: since the resume).
        images = (total - start) * (self.stage.batch_labeled + self.stage.batch_unlabeled) * ctx.world_size
        throughput = {"steps": total - start, "seconds": elapsed,
                      "images_per_s": images / elapsed if elapsed > 0 else None,
                      "data_wait_fraction": self.data_wait / elapsed if elapsed > 0 else None}
        if total > start:
            self.logger.log(f"[{self.name}] {throughput['images_per_s']:.2f} images/s over {total - start} steps "
                            f"({ctx.world_size} process(es)), {100 * throughput['data_wait_fraction']:.1f}% of the "
                            f"time waiting for data")
        return {"best_miou": self.best, "evals": self.evals, "skipped_steps": self.skipped,
                "train_time_s": self.train_time, "throughput": throughput}

    def fit(self, labeled_view, unlabeled_view, evaluate_fn=None) -> dict:
        """The whole stage: restore, every remaining step, finish. evaluate_fn(model) -> metrics
        dict is called every `stage.eval_every` epochs (on all ranks)."""
        start = self.restore(labeled_view, unlabeled_view)
        self.bar = tqdm(total=self.total, initial=start, desc=self.name, disable=not self.ctx.is_main,
                        dynamic_ncols=True)
        for step in range(start, self.total):
            lr = self.step(step)
            self.bar.update(1)
            faults.reached("train_step")
            self.periodic(step + 1, lr, evaluate_fn)
        self.bar.close()
        return self.finish()
