"""BatchNorm synchronised over ranks with plain all-reduces, so `model.sync_bn` also works where
torch's SyncBatchNorm does not (CPU / gloo: multi-process runs and their tests on a laptop)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients: every rank's loss depends
    on the summed value, so each input's gradient collects all of them. (Written here because
    torch.distributed.nn.functional.all_reduce is deprecated and warns on every call.)"""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class PortableSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch over all ranks, from
    plain all-reduces that every backend has (torch.nn.SyncBatchNorm refuses CPU tensors).

    Training on several ranks: mean and biased variance over every rank's N*H*W values per
    channel (two passes: the sum, then the squared deviations from the global mean, which is
    numerically safer than E[x^2] - E[x]^2); running statistics updated as BatchNorm does, with
    the unbiased variance. Otherwise it is BatchNorm2d. Same parameters and buffers as
    BatchNorm2d, so state dicts load into either."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        xf = x.float()  # statistics in fp32 under autocast, as BatchNorm computes them
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.new_tensor([x.numel() / x.shape[1]])])
        total = _AllReduceSum.apply(local)
        count = total[-1].detach()
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)} "
                             f"on each of {dist.get_world_size()} ranks")
        mean = total[:-1] / count
        centered = xf - mean[None, :, None, None]
        var = _AllReduceSum.apply((centered * centered).sum(dim=(0, 2, 3))) / count
        out = centered * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: cumulative moving average, as in BatchNorm.
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(var * (count / (count - 1)), alpha=factor)


def convert_portable_sync_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under `module` by a PortableSyncBatchNorm2d sharing its parameters
    and buffers. Other BatchNorm kinds (1d/3d) are an error: they would silently stay per-rank."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, PortableSyncBatchNorm2d):
        if type(module) is not nn.BatchNorm2d:
            raise TypeError(f"model.sync_bn on CPU supports BatchNorm2d only, found {type(module).__name__}")
        return _portable_copy(module)
    for name, child in module.named_children():
        converted = convert_portable_sync_bn(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _portable_copy(bn: nn.BatchNorm2d) -> PortableSyncBatchNorm2d:
    new = PortableSyncBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias  # the same Parameters: optimizers keep them
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new
