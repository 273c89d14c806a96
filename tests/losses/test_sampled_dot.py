"""losses/sampled_dot.py: the sampled row dot products against loops, their gradient (gradcheck), and
the keys it needs detached."""
import pytest
import torch

from losses.sampled_dot import sampled_row_dot


def test_sampled_row_dot_values_and_gradient():
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    keys = torch.randn(9, 5, dtype=torch.float64, generator=g)
    index = torch.randint(0, 9, (6, 4), generator=g)
    out = sampled_row_dot(queries, keys, index)
    loops = torch.tensor([[float(queries[r].detach() @ keys[index[r, s]]) for s in range(4)] for r in range(6)],
                         dtype=torch.float64)
    assert torch.allclose(out, loops)
    assert torch.autograd.gradcheck(lambda q: sampled_row_dot(q, keys, index), (queries,))
    with pytest.raises(ValueError, match="detached"):
        sampled_row_dot(queries, keys.requires_grad_(True), index)
