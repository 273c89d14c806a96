"""ReCo: regional contrastive loss on the representation map (Liu et al., ICLR 2022), batched.

For every class present among the valid (non-ignore) pixels of the batch:
  * queries: `num_queries` pixels drawn with replacement from the class's *hard* pixels (the
    predicted probability of the class below `strong_threshold`); a class without hard pixels
    contributes no queries but still counts in the average;
  * positive key: the class mean representation over all its valid pixels;
  * negatives: `num_negatives` per query, each from another present class chosen with
    probability softmax(cosine(class means) / temperature), then a pixel of that class
    uniformly;
  * keys are detached; logits are cosine similarities / temperature; cross-entropy with the
    positive at index 0 (paper Eqn. 1), averaged over queries, summed over the classes with
    queries and divided by the number of PRESENT classes (the original code's
    `reco_loss / valid_seg`). Zero when fewer than two classes are present.

Host reads. On CUDA a call makes NONE: every quantity that depends on the labels (which classes
are present, how many pixels and hard pixels each has, whether there is anything to contrast)
stays a device tensor. Reading one on the host would stall the CPU until the queued forward
pass has finished, and the GPU would then idle while the CPU queues the rest of the step. So
the work is dense over all `num_classes` classes, whether present or not: absent classes and
classes without hard pixels draw harmless in-range indices and enter the sum with weight 0, and
the divisor is a device tensor. This costs queries and negatives for absent classes too
(benchmarks/reco_loss.py on CPU: no difference with all 11 CamVid classes present, about 1.8x
the loss's own time with 6 of 11 present; CamVid and Cityscapes batches hold most classes). The label range check is `torch._assert_async` on accelerators (a
device-side assert: the process fails at a later CUDA call) and a clear ValueError on CPU, where a
host read costs nothing. `test_reco.py` runs the whole loss on `meta` tensors, which have no
data, so any data-dependent host read (`.item()`, `bool(t)`, `nonzero`, masked indexing,
`bincount`, which syncs on CUDA to size its output) would make that test fail.

The work is split in two so a test can check the arithmetic against Eqn. 1 written with
plain loops on the very same draws: `sample_reco_indices` (all randomness, no gradient) and
`reco_from_indices` (deterministic, differentiable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sampled_dot import sampled_row_dot

from core.labels import IGNORE_INDEX


@dataclass
class ReCoIndices:
    """One draw of ReCo's queries and negatives, dense over all C classes (row c = class c).

    Pixel indices are flat: n * h * w + y * w + x. Rows of classes with weight 0 hold arbitrary
    in-range indices and must not be read as samples.
    """

    class_weight: torch.Tensor  # (C,) float32: 1 where class c's queries count, else 0
    num_present: torch.Tensor  # () float32: present classes, the divisor (>= 1 to avoid 0/0)
    positive_keys: torch.Tensor  # (C, D) class mean representation (detached, not normalised)
    query_index: torch.Tensor  # (C, Q) flat pixel index of each query
    negative_index: torch.Tensor  # (C, Q, K) flat pixel index of each negative key


def downsample_labels(label: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of (N, H, W) int labels to (N, *size); ignore stays ignore."""
    if label.dim() != 3:
        raise ValueError(f"label must be (N, H, W), got shape {tuple(label.shape)}")
    if tuple(label.shape[-2:]) == tuple(size):
        return label.long()
    # float32 holds every label value (<= 255) exactly, so the round trip is lossless.
    resized = F.interpolate(label[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0].long()


def _uniform_below(upper: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Integers uniform in [0, upper) elementwise (upper >= 1). The modulo bias of a 62-bit draw is
    below 1e-13 for any pixel count, so this is uniform for every practical purpose."""
    draws = torch.randint(0, 2**62, upper.shape, generator=generator, device=upper.device)
    return draws % upper


def _check_label_values(label_flat: torch.Tensor, num_classes: int) -> None:
    """Labels must be 0..C-1 or IGNORE_INDEX. A host check would sync an accelerator, so there
    the check is a device-side assert (no message reaches Python; CUDA_LAUNCH_BLOCKING=1 points
    at it)."""
    ok = (label_flat == IGNORE_INDEX) | ((label_flat >= 0) & (label_flat < num_classes))
    if label_flat.device.type != "cpu":
        torch._assert_async(ok.all(), f"reco_loss: label values must lie in [0, {num_classes}) or be "
                                      f"{IGNORE_INDEX}")
        return
    if not bool(ok.all()):
        raise ValueError(
            f"label values must lie in [0, {num_classes}) or be {IGNORE_INDEX} (ignore); "
            f"found {int(label_flat[~ok][0])}"
        )


@dataclass
class _PixelTable:
    """Pixel indices grouped by class (easy pixels, then hard ones; ignore last) and, per class
    c, where its block starts and how many pixels / hard pixels it holds. All device tensors."""

    order: torch.Tensor  # (M,) flat pixel indices sorted by (class, hard)
    class_start: torch.Tensor  # (C,)
    class_count: torch.Tensor  # (C,)
    hard_start: torch.Tensor  # (C,)
    hard_count: torch.Tensor  # (C,)


def _pixel_table(class_key: torch.Tensor, hard: torch.Tensor, num_classes: int) -> _PixelTable:
    """class_key: (M,) class of each pixel, num_classes for ignore; hard: (M,) bool.

    One combined key 2 * class + hard gives both tables at once: its counts (a scatter_add:
    `bincount` would read its maximum on the host to size the output) are the easy / hard pixel
    counts, and a stable argsort of it puts each class's pixels in one block, hard ones last."""
    key = class_key * 2 + hard.long()
    count = torch.zeros(2 * num_classes + 2, dtype=torch.long, device=key.device)
    count.scatter_add_(0, key, torch.ones_like(key))
    start = torch.cumsum(count, 0) - count
    easy_count, hard_count = count[0:-2:2], count[1:-2:2]
    return _PixelTable(order=torch.argsort(key, stable=True), class_start=start[0:-2:2],
                       class_count=easy_count + hard_count, hard_start=start[1:-2:2],
                       hard_count=hard_count)


def _draw_from_blocks(order: torch.Tensor, start: torch.Tensor, count: torch.Tensor,
                      generator: Optional[torch.Generator]) -> torch.Tensor:
    """order[start + uniform[0, count)] elementwise: a uniform pixel of each requested block.
    An empty block (count 0, start possibly == M) yields some in-range pixel; callers weight it 0."""
    position = start + _uniform_below(count.clamp(min=1), generator)
    return order[position.clamp(max=order.numel() - 1)]


def _negative_class_prob(class_mean: torch.Tensor, present: torch.Tensor, temperature: float,
                         usable: torch.Tensor) -> torch.Tensor:
    """(C, C): row c = softmax over the other present classes of cos(mean_c, mean_j) / T.

    Rows that are not `usable` (absent class, or no other class present) would be all -inf, and
    a NaN row breaks `multinomial`; they get a uniform row instead (their draws get weight 0)."""
    num_classes = class_mean.shape[0]
    mean_unit = F.normalize(class_mean, dim=1)
    similarity = (mean_unit @ mean_unit.T) / temperature
    # A diverged model has NaN representations: sample as if all similarities were equal rather
    # than crash in `multinomial`. The loss itself stays non-finite (the queries carry the NaN), so
    # the trainer still reports the step; hiding nothing, this only keeps sampling from failing first.
    similarity = torch.where(torch.isnan(similarity), torch.zeros_like(similarity), similarity)
    eye = torch.eye(num_classes, dtype=torch.bool, device=class_mean.device)
    similarity = similarity.masked_fill(eye | ~present[None, :], float("-inf"))
    similarity = torch.where(usable[:, None], similarity, torch.zeros_like(similarity))
    return torch.softmax(similarity, dim=1)


@torch.no_grad()
def sample_reco_indices(
    rep: torch.Tensor,
    label: torch.Tensor,
    prob: torch.Tensor,
    num_classes: int,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    strong_threshold: float = 0.97,
    generator: Optional[torch.Generator] = None,
) -> ReCoIndices:
    """Draw ReCo's queries and negatives. `label` must already be at rep resolution (N, h, w).

    When there is nothing to contrast (fewer than two classes present, or no present class has
    a hard pixel) every class weight is 0, so the loss is an exact, graph-connected zero.
    """
    n, dim, h, w = rep.shape
    if tuple(label.shape) != (n, h, w):
        raise ValueError(f"label shape {tuple(label.shape)} does not match rep's (N, h, w) = {(n, h, w)}")
    if tuple(prob.shape) != (n, num_classes, h, w):
        raise ValueError(
            f"prob must be (N, num_classes, h, w) = {(n, num_classes, h, w)} at rep resolution, "
            f"got {tuple(prob.shape)}"
        )
    label_flat = label.reshape(-1)
    _check_label_values(label_flat, num_classes)
    valid = label_flat != IGNORE_INDEX
    class_key = torch.where(valid, label_flat, torch.full_like(label_flat, num_classes))

    # Hard pixels: the predicted probability of the pixel's own (labelled) class is low.
    own_prob = prob.detach().float().gather(1, class_key.clamp(max=num_classes - 1).view(n, 1, h, w))
    hard = valid & (own_prob.reshape(-1) < strong_threshold)
    table = _pixel_table(class_key, hard, num_classes)

    present = table.class_count > 0
    num_present = present.sum()
    usable = present & (num_present >= 2)  # has at least one other present class to contrast with
    class_weight = (usable & (table.hard_count > 0)).float()

    rep_flat = rep.detach().float().permute(0, 2, 3, 1).reshape(-1, dim)
    class_sum = torch.zeros(num_classes + 1, dim, device=rep.device, dtype=torch.float32)
    class_sum.index_add_(0, class_key, rep_flat)  # row num_classes collects the ignore pixels
    class_mean = class_sum[:num_classes] / table.class_count.clamp(min=1)[:, None].float()

    # Queries: uniform (with replacement) among the class's hard pixels.
    query_index = _draw_from_blocks(
        table.order, table.hard_start[:, None].expand(-1, num_queries),
        table.hard_count[:, None].expand(-1, num_queries), generator,
    )
    # Negatives: one multinomial call draws the classes for all rows, then a uniform pixel each.
    neg_prob = _negative_class_prob(class_mean, present, temperature, usable)
    neg_class = torch.multinomial(neg_prob, num_queries * num_negatives, replacement=True, generator=generator)
    negative_index = _draw_from_blocks(
        table.order, table.class_start[neg_class], table.class_count[neg_class], generator
    )
    return ReCoIndices(
        class_weight=class_weight,
        num_present=num_present.clamp(min=1).float(),
        positive_keys=class_mean,
        query_index=query_index,
        negative_index=negative_index.view(num_classes, num_queries, num_negatives),
    )


def reco_from_indices(rep: torch.Tensor, indices: ReCoIndices, temperature: float = 0.5) -> torch.Tensor:
    """Eqn. 1 on a given draw. rep: (N, D, h, w) float32; differentiable in rep (queries only)."""
    n, dim, h, w = rep.shape
    num_rows, num_queries, num_negatives = indices.negative_index.shape
    # Gather the queries from rep's own layout (not from a permuted copy), so the gradient
    # reaching the representation head has rep's memory format: a mismatched one makes the
    # head's convolution backward measurably slower.
    image, position = indices.query_index // (h * w), indices.query_index % (h * w)
    queries = F.normalize(rep.flatten(2)[image, :, position], dim=-1)  # (C, Q, D), carries the gradient
    positive = F.normalize(indices.positive_keys.detach(), dim=-1)  # (C, D)
    # Normalise every pixel once; negatives are rows of this detached table.
    keys = F.normalize(rep.detach().permute(0, 2, 3, 1).reshape(-1, dim), dim=1)

    positive_logit = torch.einsum("cqd,cd->cq", queries, positive)
    negative_logit = sampled_row_dot(
        queries.reshape(-1, dim), keys, indices.negative_index.reshape(-1, num_negatives)
    ).view(num_rows, num_queries, num_negatives)
    logits = torch.cat([positive_logit[..., None], negative_logit], dim=-1) / temperature
    # Cross-entropy with target 0, written out to avoid a [C*Q] target tensor. Every row is
    # finite (F.normalize maps a zero vector to zero), so weight 0 really removes a row and
    # still leaves the loss connected to rep's graph, as DDP requires.
    per_query = torch.logsumexp(logits, dim=-1) - logits[..., 0]
    return (per_query.mean(dim=1) * indices.class_weight).sum() / indices.num_present


def reco_loss(
    rep: torch.Tensor,
    label: torch.Tensor,
    prob: torch.Tensor,
    num_classes: int = 11,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    strong_threshold: float = 0.97,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """ReCo loss. rep: (N, D, h, w); label: (N, H, W) int64 with 255 = ignore (nearest-resized
    to (h, w) here); prob: (N, C, h, w) softmax probabilities at rep resolution (detached here).

    Always fp32 (autocast is switched off inside). Returns a zero that is still connected to
    `rep`'s graph when there is nothing to contrast, so DDP sees every parameter used. Makes no
    data-dependent host read on accelerators (see the module docstring).
    """
    if rep.dim() != 4:
        raise ValueError(f"rep must be (N, D, h, w), got shape {tuple(rep.shape)}")
    if num_queries < 1 or num_negatives < 1 or temperature <= 0:
        raise ValueError(
            f"need num_queries >= 1, num_negatives >= 1, temperature > 0; got "
            f"{num_queries}, {num_negatives}, {temperature}"
        )
    with torch.autocast(device_type=rep.device.type, enabled=False):
        rep32 = rep.float()
        label_small = downsample_labels(label.to(rep.device), rep.shape[-2:])
        indices = sample_reco_indices(
            rep32, label_small, prob, num_classes, temperature, num_queries, num_negatives,
            strong_threshold, generator,
        )
        return reco_from_indices(rep32, indices, temperature)


class ReCoLoss(nn.Module):
    """`reco_loss` with its hyper-parameters fixed at construction (for configs)."""

    def __init__(self, num_classes: int, temperature: float = 0.5, num_queries: int = 256,
                 num_negatives: int = 512, strong_threshold: float = 0.97):
        super().__init__()
        self.num_classes = num_classes
        self.temperature = temperature
        self.num_queries = num_queries
        self.num_negatives = num_negatives
        self.strong_threshold = strong_threshold

    def forward(self, rep, label, prob, generator: Optional[torch.Generator] = None):
        return reco_loss(rep, label, prob, self.num_classes, self.temperature, self.num_queries,
                         self.num_negatives, self.strong_threshold, generator)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, temperature={self.temperature}, "
                f"num_queries={self.num_queries}, num_negatives={self.num_negatives}, "
                f"strong_threshold={self.strong_threshold}")
