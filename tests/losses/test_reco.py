"""ReCo loss (losses/reco.py): Eqn. 1 against explicit loops on the same draws, sampling rules, the
divisor, degenerate cases, no data-dependent host read."""
import math

import pytest
import torch

from losses.reco import downsample_labels, reco_from_indices, reco_loss, sample_reco_indices

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


def _classes_with_queries(label, prob):
    """Present classes (from the labels) and those with a hard pixel, by plain loops."""
    n, c, h, w = prob.shape
    present, hard = set(), set()
    for i, v in enumerate(label.reshape(-1).tolist()):
        if v == 255:
            continue
        present.add(v)
        if prob[i // (h * w), v, (i % (h * w)) // w, i % w] < THRESHOLD:
            hard.add(v)
    return sorted(present), sorted(hard) if len(present) >= 2 else []


def _naive_eqn1(rep, label, prob, indices, temperature):
    """Eqn. 1 with plain loops: per class with queries, per query, per negative; / present classes."""
    n, d, h, w = rep.shape
    flat_label = label.reshape(-1).tolist()
    present, query_classes = _classes_with_queries(label, prob)
    total = rep.sum() * 0
    for cls in query_classes:
        members = [_pixel(rep, i) for i, v in enumerate(flat_label) if v == cls]
        positive = (sum(members) / len(members)).detach()
        terms = []
        for q, query_pixel in enumerate(indices.query_index[cls].tolist()):
            r_q = _pixel(rep, query_pixel)
            cos = lambda u, v: torch.dot(u, v) / (u.norm() * v.norm())  # noqa: E731
            pos = torch.exp(cos(r_q, positive) / temperature)
            neg = sum(torch.exp(cos(r_q, _pixel(rep, k).detach()) / temperature)
                      for k in indices.negative_index[cls, q].tolist())
            terms.append(-torch.log(pos / (pos + neg)))
        total = total + sum(terms) / len(terms)
    return total / len(present)


def test_matches_naive_eqn1_loss_and_gradient():
    rep, label, prob = _problem()
    indices = sample_reco_indices(rep, label, prob, C, temperature=0.5, num_queries=5, num_negatives=7,
                                  strong_threshold=THRESHOLD, generator=torch.Generator().manual_seed(1))
    assert _classes_with_queries(label, prob) == ([0, 1, 2, 3], [0, 1, 2])  # the fixture's design
    assert indices.class_weight.tolist() == [1, 1, 1, 0, 0] and indices.num_present.item() == 4
    fast_rep = rep.clone().requires_grad_(True)
    fast = reco_from_indices(fast_rep, indices, temperature=0.5)
    fast.backward()
    naive_rep = rep.double().requires_grad_(True)
    naive = _naive_eqn1(naive_rep, label, prob, indices, temperature=0.5)
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
    for cls in _classes_with_queries(label, prob)[1]:
        queries = indices.query_index[cls]
        assert (flat_label[queries] == cls).all() and (own_prob[queries] < THRESHOLD).all()
        hard = ((flat_label == cls) & (own_prob < THRESHOLD)).nonzero()[:, 0]
        assert set(queries.tolist()) == set(hard.tolist())  # every hard pixel gets drawn (400 draws)
        assert torch.allclose(indices.positive_keys[cls], means[cls], atol=1e-6)
        negatives = flat_label[indices.negative_index[cls]].reshape(-1)
        assert ((negatives != cls) & (negatives != 255) & (negatives < 4)).all()
        others = [c for c in range(4) if c != cls]
        expected = torch.softmax(torch.tensor([float(unit[cls] @ unit[c]) for c in others]) / 0.5, 0)
        observed = torch.tensor([(negatives == c).float().mean().item() for c in others])
        assert torch.allclose(observed, expected, atol=0.01)  # 200k draws: s.e. < 0.0012
        # within a negative class every pixel is equally likely
        counts = torch.bincount(indices.negative_index[cls].reshape(-1)[negatives == others[0]],
                                minlength=flat_label.numel())
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


@pytest.mark.parametrize("hard_classes", [(0, 1), (2,)])
def test_divides_by_present_classes_not_by_classes_with_queries(hard_classes):
    """All representations equal: every query's term is exactly log(1 + K). Classes 0..3 are
    present (P = 4) out of C = 6, only `hard_classes` (A of them) have hard pixels, so the loss
    is A * log(1 + K) / P (ReCo's `reco_loss / valid_seg`). No ignore pixel and absent classes
    last: the empty blocks of classes 4 and 5 start at the end of the pixel list."""
    num_classes, negatives = 6, 5
    label = torch.arange(4).repeat_interleave(4).view(1, 4, 4)
    rep = torch.ones(1, 3, 4, 4)
    prob = torch.full((1, num_classes, 4, 4), 0.002)
    own = torch.where(torch.isin(label, torch.tensor(hard_classes)), 0.5, 0.99)
    prob.scatter_(1, label[:, None], own[:, None].float())
    loss = reco_loss(rep, label, prob, num_classes=num_classes, num_queries=3, num_negatives=negatives,
                     generator=torch.Generator().manual_seed(0))
    expected = len(hard_classes) * math.log(1 + negatives) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_sampling_and_loss_make_no_data_dependent_host_read():
    """On CUDA a host read of a label-dependent value stalls the CPU until the forward pass is
    done. `meta` tensors have shapes but no data: `.item()`, `bool(t)`, `nonzero`, masked
    indexing and `bincount` (which syncs on CUDA to size its output) all raise on them, so the
    accelerator path running end to end on meta shows it reads nothing back. (`reco_loss`'s
    autocast wrapper has no meta backend; it reads no data either.)"""
    rep = torch.empty(2, 8, 6, 7, device="meta", requires_grad=True)
    label = downsample_labels(torch.empty(2, 12, 14, dtype=torch.long, device="meta"), (6, 7))
    prob = torch.empty(2, C, 6, 7, device="meta")
    indices = sample_reco_indices(rep, label, prob, C, 0.5, num_queries=4, num_negatives=3)
    loss = reco_from_indices(rep, indices, 0.5)
    loss.backward()
    assert loss.shape == () and rep.grad.shape == rep.shape


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
    bad[0, 0, 0] = -1
    with pytest.raises(ValueError, match="found -1"):
        reco_loss(rep, bad, prob, num_classes=C)
    with pytest.raises(ValueError, match="prob must be"):
        reco_loss(rep, label, prob[:, :3], num_classes=C)
    with pytest.raises(ValueError, match="rep must be"):
        reco_loss(rep[0], label, prob, num_classes=C)


def test_loss_value_for_uniform_similarities():
    """All representations equal: every logit is 1/T, so the loss is log(1 + K) exactly."""
    rep = torch.ones(1, 4, 3, 3)
    label = torch.tensor([[[0, 0, 1], [1, 2, 2], [0, 1, 2]]])
    prob = torch.full((1, 3, 3, 3), 1 / 3)
    loss = reco_loss(rep, label, prob, num_classes=3, num_queries=4, num_negatives=9)
    assert loss.item() == pytest.approx(math.log(10), abs=1e-5)


def test_a_diverged_representation_gives_a_nonfinite_loss_not_a_crash():
    """NaN representations (a diverged model) must surface as a non-finite loss, which the trainer
    reports with its step, not as an error inside the negative-class sampling."""
    rep, label, prob = _problem()
    rep = rep.clone()
    rep[1] = float("nan")  # every pixel of the second image
    loss = reco_loss(rep, label, prob, num_classes=C, generator=torch.Generator().manual_seed(0))
    assert not torch.isfinite(loss)
