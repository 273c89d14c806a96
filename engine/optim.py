"""SGD with a head learning-rate multiplier and the poly schedule."""
from __future__ import annotations

import torch




def make_optimizer(model, optim_cfg) -> torch.optim.SGD:
    """Two groups: the pretrained encoder at lr, the freshly initialised heads at lr x head_lr_mult."""
    backbone = {id(p) for p in model.backbone.parameters()}
    head = [p for p in model.parameters() if id(p) not in backbone]
    groups = [
        {"params": list(model.backbone.parameters()), "base_lr": optim_cfg.lr},
        {"params": head, "base_lr": optim_cfg.lr * optim_cfg.head_lr_mult},
    ]
    for g in groups:
        g["lr"] = g["base_lr"]
    return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           nesterov=optim_cfg.nesterov, weight_decay=optim_cfg.weight_decay)


def poly_lr(base_lr: float, step: int, total_steps: int, power: float) -> float:
    """lr at optimizer step `step` (0-based) of `total_steps`: base * (1 - step/total)^power."""
    return base_lr * (1.0 - min(step, total_steps) / total_steps) ** power


def set_poly_lr(optimizer, step: int, total_steps: int, power: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = poly_lr(g["base_lr"], step, total_steps, power)
    return optimizer.param_groups[0]["lr"]
