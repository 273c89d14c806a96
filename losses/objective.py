"""The training objective of every stage (the paper's Eq. 1 with ReCo's term):

    loss = CE(labeled) + loss.unlabeled_weight * CE(pseudo-labeled) + loss.reco_weight * ReCo

for one batch whose first `num_labeled` images are the labeled ones. ReCo's hard queries use the
softmax of the classifier's logits at the representation's resolution (stride 4), as in ReCo."""
from __future__ import annotations

import torch

from .ce import masked_cross_entropy
from .reco import reco_loss


def objective(logits: torch.Tensor, labels: torch.Tensor, num_labeled: int, loss_cfg, *,
              rep: torch.Tensor | None = None, coarse: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """(total loss, {term: value}); `rep` / `coarse` are None when the stage trains without ReCo.
    `loss_cfg` is the config's `loss` section."""
    parts = {"ce_labeled": masked_cross_entropy(logits[:num_labeled], labels[:num_labeled])}
    loss = parts["ce_labeled"]
    if num_labeled < logits.shape[0]:
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
