"""Dot products of queries with sampled rows of a constant key table, without materialising keys.

ReCo compares every query with its own set of sampled negative keys. Gathering those keys
into a [queries, negatives, dim] tensor costs queries * negatives * dim floats (1.5 GB at
ReCo's defaults of 11 classes x 256 queries x 512 negatives x 256 dims), and autograd would keep
that tensor alive until backward. The keys are detached in ReCo, so the only gradient needed is
the one for the queries, and that gradient is a weighted sum of key rows: exactly what
`F.embedding_bag(mode="sum", per_sample_weights=...)` computes in one fused pass. The forward
gathers keys block by block so the transient tensor stays a few megabytes (cache-sized on CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Bytes of gathered keys held at once in the forward pass. On CPU a block that fits in cache
# is markedly faster than one large gather (which is bound by memory writes); on GPUs a large
# block keeps the number of kernel launches small.
_CPU_BLOCK_BYTES = 2 << 20
_ACCELERATOR_BLOCK_BYTES = 256 << 20


class _SampledRowDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries: torch.Tensor, keys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        rows, num_samples = index.shape
        block_bytes = _CPU_BLOCK_BYTES if queries.device.type == "cpu" else _ACCELERATOR_BLOCK_BYTES
        rows_per_block = max(1, block_bytes // (num_samples * keys.shape[1] * keys.element_size()))
        out = queries.new_empty(rows, num_samples)
        # A loop over fixed-size memory blocks, not over queries or classes: each block is
        # one batched gather + one batched matrix product.
        for start in range(0, rows, rows_per_block):
            stop = min(start + rows_per_block, rows)
            gathered = keys.index_select(0, index[start:stop].reshape(-1)).view(stop - start, num_samples, -1)
            torch.bmm(gathered, queries[start:stop, :, None], out=out[start:stop, :, None])
        ctx.save_for_backward(keys, index)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        keys, index = ctx.saved_tensors
        # d out[r, s] / d queries[r] = keys[index[r, s]]  =>  grad_queries[r] = sum_s g[r, s] keys[index[r, s]]
        grad_queries = F.embedding_bag(
            index, keys, per_sample_weights=grad_out.contiguous().to(keys.dtype), mode="sum"
        )
        return grad_queries, None, None


def sampled_row_dot(queries: torch.Tensor, keys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[r, s] = queries[r] . keys[index[r, s]], differentiable in `queries` only.

    queries: (R, D) float; keys: (M, D) same dtype, must not require grad (ReCo's keys are
    detached); index: (R, S) int64 row indices into keys. Returns (R, S).
    """
    if keys.requires_grad:
        raise ValueError("sampled_row_dot: keys must be detached (no gradient flows into them)")
    if queries.dim() != 2 or keys.dim() != 2 or index.dim() != 2:
        raise ValueError(
            f"sampled_row_dot: expected queries (R, D), keys (M, D), index (R, S); got "
            f"{tuple(queries.shape)}, {tuple(keys.shape)}, {tuple(index.shape)}"
        )
    if queries.shape[0] != index.shape[0] or queries.shape[1] != keys.shape[1]:
        raise ValueError(
            f"sampled_row_dot: shapes do not fit: queries {tuple(queries.shape)}, "
            f"keys {tuple(keys.shape)}, index {tuple(index.shape)}"
        )
    if queries.dtype != keys.dtype:
        raise ValueError(f"sampled_row_dot: dtype mismatch {queries.dtype} vs {keys.dtype}")
    return _SampledRowDot.apply(queries, keys.contiguous(), index.contiguous())
