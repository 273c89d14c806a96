"""ReCo loss: Eqn. 1 against explicit loops on the same draws, sampling rules, degenerate cases."""

import math

import pytest
import torch

from losses.reco import downsample_labels, reco_from_indices, reco_loss, sample_reco_indices
from losses.sampled_dot import sampled_row_dot

C = 5  # classes 0..3 appear in the fixture, class 4 never does
THRESHOLD = 0.97


def _problem(seed=0, n=2, dim=8, h=6, w=7):
    """rep, label at rep size, prob: class 3 is confidently predicted everywhere (no hard pixel)."""
    g = torch.Generator().manual_seed(seed)
    rep = torch.randn(n, dim, h, w, generator=g)
    label = torch.randint(0, 4, (n, h, w), generator=g)
    label[0, 0, :3] = 255
    label[1, 2:4, 2:4] = 255
    prob = torch.softmax(torch.randn(n, C, h, w, generator=g) * 4, dim=1)
    prob[:, :, :, :] = torch.where((label == 3)[:, None], torch.full_like(prob, 0.005), prob)
    prob[:, 3] = torch.where(label == 3, torch.full_like(prob[:, 3], 0.98), prob[:, 3])
    return rep, label, prob


def _pixel(rep, i):
    n, d, h, w = rep.shape
    return rep[i // (h * w), :, (i % (h * w)) // w, i % w]


def _naive_eqn1(rep, label, indices, temperature):
    """Eqn. 1 with plain loops: per class, per query, per negative."""
    n, d, h, w = rep.shape
    flat_label = label.reshape(-1).tolist()
    present = sorted({v for v in flat_label if v != 255})
    total = rep.sum() * 0
    for a, cls in enumerate(indices.query_classes.tolist()):
        members = [_pixel(rep, i) for i, v in enumerate(flat_label) if v == cls]
        positive = (sum(members) / len(members)).detach()
        terms = []
        for q, query_pixel in enumerate(indices.query_index[a].tolist()):
            r_q = _pixel(rep, query_pixel)
            cos = lambda u, v: torch.dot(u, v) / (u.norm() * v.norm())  # noqa: E731
            pos = torch.exp(cos(r_q, positive) / temperature)
            neg = sum(torch.exp(cos(r_q, _pixel(rep, k).detach()) / temperature)
                      for k in indices.negative_index[a, q].tolist())
            terms.append(-torch.log(pos / (pos + neg)))
        total = total + sum(terms) / len(terms)
    return total / len(present)


def test_matches_naive_eqn1_loss_and_gradient():
    rep, label, prob = _problem()
    indices = sample_reco_indices(rep, label, prob, C, temperature=0.5, num_queries=5, num_negatives=7,
                                  strong_threshold=THRESHOLD, generator=torch.Generator().manual_seed(1))
    assert indices.num_present_classes == 4 and indices.query_classes.tolist() == [0, 1, 2]
    fast_rep = rep.clone().requires_grad_(True)
    fast = reco_from_indices(fast_rep, indices, temperature=0.5)
    fast.backward()
    naive_rep = rep.double().requires_grad_(True)
    naive = _naive_eqn1(naive_rep, label, indices, temperature=0.5)
    naive.backward()
    assert fast.item() == pytest.approx(naive.item(), abs=1e-5)
    assert torch.allclose(fast_rep.grad.double(), naive_rep.grad, atol=1e-5)
    assert fast_rep.grad.abs().sum() > 0


def test_reco_loss_is_sampling_plus_eqn1_with_downsampled_labels():
    rep, label, prob = _problem()
    big_label = label.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # nearest-down -> label
    assert torch.equal(downsample_labels(big_label, label.shape[-2:]), label)
    loss = reco_loss(rep, big_label, prob, num_classes=C, num_queries=5, num_negatives=7,
                     generator=torch.Generator().manual_seed(1))
    indices = sample_reco_indices(rep, label, prob, C, 0.5, 5, 7, THRESHOLD, torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(reco_from_indices(rep, indices, 0.5).item(), abs=1e-6)


def test_sampling_rules():
    rep, label, prob = _problem(dim=4)
    indices = sample_reco_indices(rep, label, prob, C, 0.5, num_queries=400, num_negatives=500,
                                  strong_threshold=THRESHOLD, generator=torch.Generator().manual_seed(2))
    flat_label = label.reshape(-1)
    flat_rep = rep.permute(0, 2, 3, 1).reshape(-1, rep.shape[1])
    own_prob = prob.permute(0, 2, 3, 1).reshape(-1, C).gather(1, flat_label.clamp(max=C - 1)[:, None])[:, 0]
    means = torch.stack([flat_rep[flat_label == c].mean(0) for c in range(4)])
    unit = means / means.norm(dim=1, keepdim=True)
    for a, cls in enumerate(indices.query_classes.tolist()):
        queries = indices.query_index[a]
        assert (flat_label[queries] == cls).all() and (own_prob[queries] < THRESHOLD).all()
        hard = ((flat_label == cls) & (own_prob < THRESHOLD)).nonzero()[:, 0]
        assert set(queries.tolist()) == set(hard.tolist())  # every hard pixel gets drawn (400 draws)
        assert torch.allclose(indices.positive_keys[a], means[cls], atol=1e-6)
        negatives = flat_label[indices.negative_index[a]].reshape(-1)
        assert ((negatives != cls) & (negatives != 255) & (negatives < 4)).all()
        others = [c for c in range(4) if c != cls]
        expected = torch.softmax(torch.tensor([float(unit[cls] @ unit[c]) for c in others]) / 0.5, 0)
        observed = torch.tensor([(negatives == c).float().mean().item() for c in others])
        assert torch.allclose(observed, expected, atol=0.01)  # 200k draws: s.e. < 0.0012
        # within a negative class every pixel is equally likely
        counts = torch.bincount(indices.negative_index[a].reshape(-1)[negatives == others[0]], minlength=flat_label.numel())
        members = (flat_label == others[0]).nonzero()[:, 0]
        share = counts[members].float() / counts[members].sum()
        assert torch.allclose(share, torch.full_like(share, 1 / len(members)), rtol=0.25)


def test_separated_clusters_give_lower_loss_than_mixed():
    g = torch.Generator().manual_seed(3)
    label = torch.randint(0, 4, (2, 10, 12), generator=g)
    prob = torch.full((2, 4, 10, 12), 0.25)
    directions = torch.eye(16)[:4] * 5
    separated = directions[label].permute(0, 3, 1, 2) + 0.1 * torch.randn(2, 16, 10, 12, generator=g)
    mixed = torch.randn(2, 16, 10, 12, generator=g)
    kwargs = dict(num_classes=4, num_queries=64, num_negatives=128)
    low = reco_loss(separated, label, prob, generator=torch.Generator().manual_seed(0), **kwargs)
    high = reco_loss(mixed, label, prob, generator=torch.Generator().manual_seed(0), **kwargs)
    assert low.item() < high.item() - 1.0


@pytest.mark.parametrize("case", ["one_class", "no_hard_pixel", "all_ignore"])
def test_degenerate_cases_give_graph_connected_zero(case):
    rep, label, prob = _problem()
    if case == "one_class":
        label = torch.where(label == 255, label, torch.zeros_like(label))
    elif case == "no_hard_pixel":
        prob = torch.ones_like(prob)
    else:
        label = torch.full_like(label, 255)
    rep = rep.requires_grad_(True)
    loss = reco_loss(rep, label, prob, num_classes=C, generator=torch.Generator().manual_seed(0))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert rep.grad is not None and (rep.grad == 0).all()


def test_class_without_hard_pixels_counts_in_the_average():
    """Class 3 has no hard pixel: no queries, but it still divides the sum (4 present classes)."""
    rep, label, prob = _problem()
    g = torch.Generator().manual_seed(5)
    indices = sample_reco_indices(rep, label, prob, C, 0.5, 5, 7, THRESHOLD, g)
    per_class_sum = reco_from_indices(rep, indices, 0.5) * indices.num_present_classes
    assert indices.num_present_classes == 4 and len(indices.query_classes) == 3
    assert per_class_sum.item() / 3 > reco_from_indices(rep, indices, 0.5).item()


def test_fp32_under_autocast_and_prob_detached():
    rep, label, prob = _problem()
    prob = prob.clone().requires_grad_(True)
    reference = reco_loss(rep, label, prob, num_classes=C, generator=torch.Generator().manual_seed(0))
    half = rep.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reco_loss(half, label, prob, num_classes=C, generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32
    expected = reco_loss(half.detach().float(), label, prob, num_classes=C, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    assert half.grad is not None and prob.grad is None
    assert reference.item() != pytest.approx(loss.item(), abs=1e-7)  # bf16 rounding is visible


def test_generator_makes_it_deterministic():
    rep, label, prob = _problem()
    a = reco_loss(rep, label, prob, num_classes=C, generator=torch.Generator().manual_seed(7))
    b = reco_loss(rep, label, prob, num_classes=C, generator=torch.Generator().manual_seed(7))
    c = reco_loss(rep, label, prob, num_classes=C, generator=torch.Generator().manual_seed(8))
    assert a.item() == b.item() and a.item() != c.item()


def test_bad_inputs_are_errors():
    rep, label, prob = _problem()
    bad = label.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match="found 7"):
        reco_loss(rep, bad, prob, num_classes=C)
    with pytest.raises(ValueError, match="prob must be"):
        reco_loss(rep, label, prob[:, :3], num_classes=C)
    with pytest.raises(ValueError, match="rep must be"):
        reco_loss(rep[0], label, prob, num_classes=C)


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


def test_loss_value_for_uniform_similarities():
    """All representations equal: every logit is 1/T, so the loss is log(1 + K) exactly."""
    rep = torch.ones(1, 4, 3, 3)
    label = torch.tensor([[[0, 0, 1], [1, 2, 2], [0, 1, 2]]])
    prob = torch.full((1, 3, 3, 3), 1 / 3)
    loss = reco_loss(rep, label, prob, num_classes=3, num_queries=4, num_negatives=9)
    assert loss.item() == pytest.approx(math.log(10), abs=1e-5)
