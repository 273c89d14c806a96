"""One training phase: `epochs x iters_per_epoch` SGD steps on labeled (+ pseudo-labeled) batches,
CE + lambda * ReCo, poly learning rate, AMP, DDP, resumable at every checkpoint.

What a step computes, for B_l labeled and B_u pseudo-labeled images:
    logits, rep = model(cat(x_l, x_u))
    loss = CE(logits_l, y_l) + w_u * CE(logits_u, y_u) + w_reco * ReCo(rep, cat(y_l, y_u), softmax(logits))
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from engine import checkpoint as ckpt
from engine import faults
from engine import distributed as dist_utils
from engine.data import stream_loader
from engine.inference import autocast
from engine.optim import make_optimizer, set_poly_lr
from losses.ce import masked_cross_entropy
from losses.reco import reco_loss


class NonFiniteLoss(RuntimeError):
    pass


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def _batches(loader):
    """An iterator over a loader that may be None (a stage without pseudo-labeled images)."""
    if loader is None:
        return iter(lambda: None, object())  # endless Nones
    return iter(loader)


def _step_loss(model, batch_l, batch_u, stage, cfg, device, amp, channels_last, generator):
    images = batch_l["image"]
    labels = batch_l["label"]
    if batch_u is not None:
        images = torch.cat([images, batch_u["image"]])
        labels = torch.cat([labels, batch_u["label"]])
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    n_l = batch_l["image"].shape[0]
    parts = {}
    with autocast(device, amp):
        if stage.reco:
            logits, rep = model(images, return_rep=True)
        else:
            logits, rep = model(images), None
    parts["ce_labeled"] = masked_cross_entropy(logits[:n_l], labels[:n_l])
    loss = parts["ce_labeled"]
    if batch_u is not None:
        parts["ce_unlabeled"] = masked_cross_entropy(logits[n_l:], labels[n_l:])
        loss = loss + cfg.loss.unlabeled_weight * parts["ce_unlabeled"]
    if rep is not None:
        # ReCo picks hard queries by the predicted probability at representation resolution.
        prob = F.interpolate(logits.detach().float(), size=rep.shape[-2:], mode="bilinear",
                             align_corners=False).softmax(dim=1)
        parts["reco"] = reco_loss(rep, labels, prob, num_classes=logits.shape[1],
                                  temperature=cfg.loss.temperature, num_queries=cfg.loss.num_queries,
                                  num_negatives=cfg.loss.num_negatives,
                                  strong_threshold=cfg.loss.strong_threshold, generator=generator)
        loss = loss + cfg.loss.reco_weight * parts["reco"]
    parts["total"] = loss
    return loss, parts


def train_phase(model, *, stage, stage_name: str, cfg, ctx, amp: str, labeled_view, unlabeled_view,
                stage_dir: Path, logger, seed: int, evaluate_fn=None) -> dict:
    """Train `model` in place for one stage; resumes from `stage_dir/checkpoints` if present.

    evaluate_fn(model) -> metrics dict, called every `stage.eval_every` epochs (all ranks).
    Returns {"best_miou", "evals", "skipped_steps", "train_time_s", "throughput"}.
    """
    device = ctx.device
    total = stage.epochs * stage.iters_per_epoch
    model.to(device)
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1009 + ctx.rank)
    ckpt_dir = stage_dir / "checkpoints"

    start, best, evals, skipped, train_time = 0, None, [], 0, 0.0
    state = ckpt.load_latest(ckpt_dir, warn=logger.log)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) != ctx.world_size:
            raise RuntimeError(f"{ckpt_dir}: checkpoint was written by {len(state['rng'])} processes, "
                               f"this run has {ctx.world_size}; resume with the same world size")
        generator.set_state(state["generator"][ctx.rank])
        start, best, evals = state["step"], state["best_miou"], state["evals"]
        skipped, train_time = state["skipped_steps"], state["train_time_s"]
        logger.log(f"[{stage_name}] resuming at step {start}/{total}")

    net = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    workers = cfg.data.workers
    loader_l = stream_loader(labeled_view, stage.batch_labeled, seed * 2, start, total, ctx, workers)
    loader_u = None
    if stage.batch_unlabeled and unlabeled_view is not None and len(unlabeled_view):
        loader_u = stream_loader(unlabeled_view, stage.batch_unlabeled, seed * 2 + 1, start, total, ctx, workers)

    def save_state(step):
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

    # Creating a loader iterator draws from the global torch RNG; do it before restoring the
    # checkpoint's RNG state so that dropout / stochastic depth continue exactly as they would have.
    batches_l, batches_u = iter(loader_l), _batches(loader_u)
    if state is not None:
        ckpt.set_rng_state(state["rng"][ctx.rank])
    net.train()
    bar = tqdm(total=total, initial=start, desc=stage_name, disable=not ctx.is_main, dynamic_ncols=True)
    t0 = time.time()
    data_wait = 0.0  # time this process spent waiting for batches: is the device left idle?
    for step in range(start, total):
        t_fetch = time.perf_counter()
        batch_l, batch_u = next(batches_l), next(batches_u)
        data_wait += time.perf_counter() - t_fetch
        lr = set_poly_lr(optimizer, step, total, cfg.optim.poly_power)
        try:
            loss, parts = _step_loss(net, batch_l, batch_u, stage, cfg, device, amp,
                                     cfg.runtime.channels_last, generator)
            bad = dist_utils.any_rank(not math.isfinite(loss.item()), ctx)
            optimizer.zero_grad(set_to_none=True)
            if bad:
                last = ckpt.step_checkpoints(ckpt_dir)
                where = f"last good checkpoint: {last[0][1]}" if last else "no checkpoint saved yet"
                if cfg.runtime.nonfinite == "stop":
                    raise NonFiniteLoss(f"non-finite loss at step {step} of stage {stage_name!r}; {where} "
                                        f"(set runtime.nonfinite=skip to skip such steps)")
                skipped += 1
                logger.log(f"[{stage_name}] step {step}: non-finite loss, step skipped ({skipped} so far)")
            else:
                scaler.scale(loss).backward()
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
        except torch.cuda.OutOfMemoryError as err:
            raise RuntimeError(
                f"CUDA out of memory in stage {stage_name!r} at step {step} with batch "
                f"{stage.batch_labeled}+{stage.batch_unlabeled} per GPU and crop {cfg.data.crop_size}: "
                f"reduce stages.{stage_name}.batch_labeled/batch_unlabeled or data.crop_size, or use "
                f"runtime.amp=bf16") from err
        done = step + 1
        bar.update(1)
        faults.reached("train_step")
        if done % cfg.runtime.log_every == 0 or done == total:
            scalars = {f"{stage_name}/loss_{k}": v.item() for k, v in parts.items()}
            scalars[f"{stage_name}/lr"] = lr
            scalars[f"{stage_name}/data_wait_fraction"] = data_wait / max(time.time() - t0, 1e-9)
            logger.scalars(scalars, done)
            bar.set_postfix(loss=f"{parts['total'].item():.3f}", lr=f"{lr:.2e}")
        if evaluate_fn is not None and stage.eval_every and done % (stage.eval_every * stage.iters_per_epoch) == 0 \
                and done < total:
            metrics = evaluate_fn(model)
            evals.append({"step": done, "miou": metrics["miou"]})
            logger.scalars({f"{stage_name}/miou": metrics["miou"]}, done)
            if best is None or metrics["miou"] > best:
                best = metrics["miou"]
                if ctx.is_main:
                    ckpt.save_verified({"model": model.state_dict(), "step": done, "miou": best},
                                       stage_dir / "best.pth")
            net.train()
        if done % cfg.runtime.checkpoint_every == 0 or done == total:
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
