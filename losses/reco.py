"""ReCo: regional contrastive loss on the representation map (Liu et al., ICLR 2022), batched.

For every class present among the valid (non-ignore) pixels of the batch:
  * queries: `num_queries` pixels drawn with replacement from the class's *hard* pixels (the
    predicted probability of the class below `strong_threshold`); a class without hard pixels
    contributes no queries;
  * positive key: the class mean representation over all its valid pixels;
  * negatives: `num_negatives` per query, each from another present class chosen with
    probability softmax(cosine(class means) / temperature), then a pixel of that class
    uniformly;
  * keys are detached; logits are cosine similarities / temperature; cross-entropy with the
    positive at index 0 (paper Eqn. 1), averaged over queries, then over the present classes.

The work is split in two so a test can check the arithmetic against Eqn. 1 written with
plain loops on the very same draws: `sample_reco_indices` (all randomness, no gradient) and
`reco_from_indices` (deterministic, differentiable). Everything is batched over classes and
queries: one multinomial draw for the negative classes of all classes, integer arithmetic on
class-sorted pixel lists for the pixel draws, and gathers + matrix products for the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sampled_dot import sampled_row_dot

IGNORE_INDEX = 255


@dataclass
class ReCoIndices:
    """One draw of ReCo's queries and negatives. Pixel indices are flat: n * h * w + y * w + x."""

    num_present_classes: int  # the loss is averaged over these (classes without queries included)
    query_classes: torch.Tensor  # (A,) class ids that have hard pixels, ascending
    positive_keys: torch.Tensor  # (A, D) class mean representation (detached, not normalised)
    query_index: torch.Tensor  # (A, Q) flat pixel index of each query
    negative_index: torch.Tensor  # (A, Q, K) flat pixel index of each negative key


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


def _sorted_by_slot(pixels: torch.Tensor, slots: torch.Tensor, num_slots: int):
    """Group pixel indices by class slot: returns (pixels sorted by slot, start, count per slot)."""
    order = torch.argsort(slots, stable=True)
    count = torch.bincount(slots, minlength=num_slots)
    start = torch.cumsum(count, 0) - count
    return pixels[order], start, count


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
) -> Optional[ReCoIndices]:
    """Draw ReCo's queries and negatives. `label` must already be at rep resolution (N, h, w).

    Returns None when there is nothing to contrast: fewer than two classes present, or no
    present class has a hard pixel.
    """
    n, dim, h, w = rep.shape
    if tuple(label.shape) != (n, h, w):
        raise ValueError(f"label shape {tuple(label.shape)} does not match rep's (N, h, w) = {(n, h, w)}")
    if tuple(prob.shape) != (n, num_classes, h, w):
        raise ValueError(
            f"prob must be (N, num_classes, h, w) = {(n, num_classes, h, w)} at rep resolution, "
            f"got {tuple(prob.shape)}"
        )
    rep_flat = rep.detach().float().permute(0, 2, 3, 1).reshape(-1, dim)
    label_flat = label.reshape(-1)

    pixel_index = (label_flat != IGNORE_INDEX).nonzero().squeeze(1)
    pixel_class = label_flat[pixel_index]
    bad = (pixel_class < 0) | (pixel_class >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"label values must lie in [0, {num_classes}) or be {IGNORE_INDEX} (ignore); "
            f"found {int(pixel_class[bad][0])}"
        )
    classes = torch.bincount(pixel_class, minlength=num_classes).nonzero().squeeze(1)
    num_present = classes.numel()
    if num_present < 2:
        return None

    # Work in "slots" 0..P-1 (present classes in ascending order) so every table is dense.
    slot_of_class = torch.full((num_classes,), -1, dtype=torch.long, device=label.device)
    slot_of_class[classes] = torch.arange(num_present, device=label.device)
    pixel_slot = slot_of_class[pixel_class]
    pixels_by_slot, slot_start, slot_count = _sorted_by_slot(pixel_index, pixel_slot, num_present)

    class_sum = torch.zeros(num_present, dim, device=rep.device, dtype=torch.float32)
    class_sum.index_add_(0, pixel_slot, rep_flat[pixel_index])
    class_mean = class_sum / slot_count[:, None].float()

    # Hard pixels: the predicted probability of the pixel's own (labelled) class is low.
    prob_flat = prob.detach().float().permute(0, 2, 3, 1).reshape(-1, num_classes)
    own_prob = prob_flat[pixel_index, pixel_class]
    is_hard = own_prob < strong_threshold
    hard_by_slot, hard_start, hard_count = _sorted_by_slot(
        pixel_index[is_hard], pixel_slot[is_hard], num_present
    )
    query_slots = (hard_count > 0).nonzero().squeeze(1)
    if query_slots.numel() == 0:
        return None

    # Queries: uniform (with replacement) among the class's hard pixels.
    q_count = hard_count[query_slots][:, None].expand(-1, num_queries)
    q_offset = _uniform_below(q_count, generator)
    query_index = hard_by_slot[hard_start[query_slots][:, None] + q_offset]

    # Negative classes: row s of `neg_prob` is softmax over the other classes of
    # cos(mean_s, mean_c) / temperature; one multinomial call draws them for all classes.
    mean_unit = F.normalize(class_mean, dim=1)
    similarity = (mean_unit @ mean_unit.T) / temperature
    similarity.fill_diagonal_(float("-inf"))
    neg_prob = torch.softmax(similarity, dim=1)[query_slots]
    neg_slot = torch.multinomial(
        neg_prob, num_queries * num_negatives, replacement=True, generator=generator
    )
    n_offset = _uniform_below(slot_count[neg_slot], generator)
    negative_index = pixels_by_slot[slot_start[neg_slot] + n_offset]

    return ReCoIndices(
        num_present_classes=num_present,
        query_classes=classes[query_slots],
        positive_keys=class_mean[query_slots],
        query_index=query_index,
        negative_index=negative_index.view(-1, num_queries, num_negatives),
    )


def reco_from_indices(rep: torch.Tensor, indices: ReCoIndices, temperature: float = 0.5) -> torch.Tensor:
    """Eqn. 1 on a given draw. rep: (N, D, h, w) float32; differentiable in rep (queries only)."""
    n, dim, h, w = rep.shape
    num_groups, num_queries, num_negatives = indices.negative_index.shape
    # Gather the queries from rep's own layout (not from a permuted copy), so the gradient
    # reaching the representation head has rep's memory format: a mismatched one makes the
    # head's convolution backward measurably slower.
    image, position = indices.query_index // (h * w), indices.query_index % (h * w)
    queries = F.normalize(rep.flatten(2)[image, :, position], dim=-1)  # (A, Q, D), carries the gradient
    positive = F.normalize(indices.positive_keys.detach(), dim=-1)  # (A, D)
    # Normalise every pixel once; negatives are rows of this detached table.
    keys = F.normalize(rep.detach().permute(0, 2, 3, 1).reshape(-1, dim), dim=1)

    positive_logit = torch.einsum("aqd,ad->aq", queries, positive)
    negative_logit = sampled_row_dot(
        queries.reshape(-1, dim), keys, indices.negative_index.reshape(-1, num_negatives)
    ).view(num_groups, num_queries, num_negatives)
    logits = torch.cat([positive_logit[..., None], negative_logit], dim=-1) / temperature
    # Cross-entropy with target 0, written out to avoid a [A*Q] target tensor.
    per_query = torch.logsumexp(logits, dim=-1) - logits[..., 0]
    return per_query.mean(dim=1).sum() / indices.num_present_classes


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
    `rep`'s graph when there is nothing to contrast, so DDP sees every parameter used.
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
        if indices is None:
            return rep32.sum() * 0.0
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
