import numpy as np
import pytest
import torch

from query.pool import RegionGrid
from query.scoring import eligible_cells, region_scores, select
from query.strategies.entropy import pixel_entropy
from query.strategies.random_regions import random_scores

H, W, R = 50, 70, 16  # uneven: 4 x 5 cells, last row 2 px tall, last column 6 px wide


def make_grid():
    return RegionGrid(height=H, width=W, region=(R, R))


# The three selection functions of before are one `select(scores, eligible, mode, budget)` now;
# these keep the old names so the assertions below read as they did.
def select_topk_per_image(scores, eligible, k):
    return select(scores, eligible, "per_image", k)


def select_topk_global(scores, eligible, n):
    return select(scores, eligible, "global", n)


def select_random(eligible, k_per_image=None, n_total=None, seed=0):
    mode, budget = ("per_image", k_per_image) if k_per_image is not None else ("global", n_total)
    return select(random_scores(np.shape(eligible), seed), eligible, mode, budget)


def test_pixel_entropy_matches_numpy_loop_and_is_safe_at_zero():
    gen = torch.Generator().manual_seed(0)
    prob = torch.softmax(3 * torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64), dim=1)
    prob[0, :, 0, 0] = torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64)  # one-hot pixel
    prob[1, :, 2, 3] = torch.tensor([0.5, 0.5, 0, 0, 0], dtype=torch.float64)
    entropy = pixel_entropy(prob)
    assert entropy.shape == (2, 6, 7)
    p = prob.numpy()
    for n in range(2):
        for y in range(6):
            for x in range(7):
                expected = -sum(q * np.log(q) for q in p[n, :, y, x] if q > 0)
                assert entropy[n, y, x].item() == pytest.approx(expected, abs=1e-12)
    assert entropy[0, 0, 0].item() == 0.0
    assert entropy[1, 2, 3].item() == pytest.approx(np.log(2), abs=1e-15)
    uniform = torch.full((1, 4, 1, 1), 0.25)
    assert pixel_entropy(uniform).item() == pytest.approx(np.log(4), rel=1e-6)
    with pytest.raises(ValueError, match="N, C, H, W"):
        pixel_entropy(prob[0])


def test_region_scores_match_per_cell_mean_loop_on_uneven_grid():
    grid = make_grid()
    entropy = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scores = region_scores(entropy, grid)
    assert scores.shape == (3, 4, 5) and scores.dtype == torch.float64
    e = entropy.numpy()
    for n in range(3):
        for r in range(4):
            for c in range(5):
                block = e[n, r * R:min((r + 1) * R, H), c * R:min((c + 1) * R, W)]
                assert scores[n, r, c].item() == pytest.approx(block.mean(), rel=1e-12)
    # edge cells are averaged over their own pixels: a constant map gives the constant everywhere
    constant = region_scores(torch.full((1, H, W), 0.7), grid)
    torch.testing.assert_close(constant, torch.full((1, 4, 5), 0.7))


def test_eligible_cells_are_the_unlabeled_cells_of_scored_images_only():
    # Nothing about labels: a query step never sees the ground truth of unlabeled images.
    labeled = np.zeros((3, 2, 3), dtype=bool)
    labeled[0, 0, 1] = labeled[0, 1, 2] = True
    labeled[2] = True                                   # a fully labeled image
    scored = np.array([True, False, True])              # image 1 was not scored
    expected = np.array([[[True, False, True], [True, True, False]],
                         [[False, False, False], [False, False, False]],
                         [[False, False, False], [False, False, False]]])
    np.testing.assert_array_equal(eligible_cells(labeled, scored), expected)
    np.testing.assert_array_equal(eligible_cells(torch.from_numpy(labeled)), ~labeled)
    with pytest.raises(ValueError, match="scored_images"):
        eligible_cells(labeled, np.ones(2, dtype=bool))
    with pytest.raises(ValueError, match="pool_cells"):
        eligible_cells(labeled.astype(np.uint8))


def test_topk_per_image_on_hand_built_scores():
    scores = np.array([[[0.1, 0.9, 0.3, 0.3],
                        [0.8, 0.2, 0.3, 0.0],
                        [0.0, 0.0, 0.95, 0.5]],
                       [[0.4, 0.4, 0.4, 0.4],
                        [0.4, 0.4, 0.4, 0.4],
                        [0.4, 0.4, 0.4, 0.4]]])
    eligible = np.ones_like(scores, dtype=bool)
    eligible[0, 2, 2] = False  # the best cell of image 0 is already labeled
    eligible[1, 0, 0] = False
    selected = select_topk_per_image(scores, eligible, k=3)
    expected = np.zeros_like(eligible)
    expected[0, 0, 1] = expected[0, 1, 0] = expected[0, 2, 3] = True  # 0.9, 0.8, 0.5
    expected[1, 0, 1] = expected[1, 0, 2] = expected[1, 0, 3] = True  # all tied: lowest indices
    np.testing.assert_array_equal(selected, expected)
    assert not (selected & ~eligible).any()
    # a tie at the cut-off (two cells of 0.3) goes to the lower flat index
    four = select_topk_per_image(scores, eligible, k=4)
    assert four[0, 0, 2] and not four[0, 1, 2]


def test_topk_per_image_with_fewer_eligible_than_k():
    scores = np.arange(12, dtype=np.float64).reshape(2, 2, 3)
    eligible = np.zeros((2, 2, 3), dtype=bool)
    eligible[0, 0, 0] = eligible[0, 1, 1] = True  # image 0: two eligible cells; image 1: none
    selected = select_topk_per_image(scores, eligible, k=4)
    np.testing.assert_array_equal(selected, eligible)
    assert select_topk_per_image(scores, eligible, k=0).sum() == 0


def naive_top(scores_flat, eligible_flat, count):
    ranked = sorted((i for i in range(len(scores_flat)) if eligible_flat[i]),
                    key=lambda i: (-scores_flat[i], i))
    return set(ranked[:count])


def test_topk_matches_naive_sort_with_many_ties_and_torch_input():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(5, 4, 6)).astype(np.float32)  # lots of ties
    eligible = rng.random((5, 4, 6)) < 0.6
    per_image = select_topk_per_image(torch.from_numpy(scores), torch.from_numpy(eligible), k=4)
    assert isinstance(per_image, np.ndarray) and per_image.dtype == bool
    for n in range(5):
        chosen = set(np.flatnonzero(per_image[n]).tolist())
        assert chosen == naive_top(scores[n].ravel(), eligible[n].ravel(), 4)
    overall = select_topk_global(scores, eligible, n=17)
    assert set(np.flatnonzero(overall).tolist()) == naive_top(scores.ravel(), eligible.ravel(), 17)
    np.testing.assert_array_equal(select_topk_per_image(scores, eligible, k=4), per_image)


def test_topk_global_on_hand_built_scores():
    scores = np.array([[[0.5, 0.1], [0.7, 0.7]],
                       [[0.9, 0.7], [0.2, 0.0]]])
    eligible = np.ones_like(scores, dtype=bool)
    eligible[1, 0, 0] = False
    selected = select_topk_global(scores, eligible, n=2)
    expected = np.zeros_like(eligible)
    expected[0, 1, 0] = expected[0, 1, 1] = True  # the 0.7s of image 0 precede image 1's 0.7
    np.testing.assert_array_equal(selected, expected)
    assert select_topk_global(scores, eligible, n=100).sum() == eligible.sum()


def test_selection_errors():
    scores = np.zeros((1, 2, 2))
    eligible = np.ones((1, 2, 2), dtype=bool)
    with pytest.raises(ValueError, match="NaN"):
        select_topk_per_image(np.full((1, 2, 2), np.nan), eligible, k=1)
    with pytest.raises(ValueError, match="eligible"):
        select_topk_global(scores, eligible[0], n=1)
    with pytest.raises(ValueError, match="budget must be"):
        select_topk_per_image(scores, eligible, k=-1)
    # select_random's "give exactly one of k_per_image and n_total" is the mode now
    with pytest.raises(ValueError, match="mode must be one of"):
        select(scores, eligible, "both", 1)
    with pytest.raises(ValueError, match="mode must be one of"):
        select(scores, eligible, None, 1)


def test_random_baseline_respects_eligibility_budget_and_seed():
    rng = np.random.default_rng(11)
    eligible = rng.random((6, 12, 16)) < 0.5
    eligible[3] = False
    eligible[4] = False
    eligible[4, 0, :2] = True  # only two eligible cells in image 4
    picked = select_random(eligible, k_per_image=4, seed=0)
    assert not (picked & ~eligible).any()
    np.testing.assert_array_equal(picked.sum(axis=(1, 2)), np.minimum(4, eligible.sum(axis=(1, 2))))
    np.testing.assert_array_equal(select_random(eligible, k_per_image=4, seed=0), picked)
    assert not np.array_equal(select_random(eligible, k_per_image=4, seed=1), picked)
    overall = select_random(eligible, n_total=30, seed=2)
    assert overall.sum() == 30 and not (overall & ~eligible).any()
    np.testing.assert_array_equal(select_random(eligible, n_total=30, seed=2), overall)
    assert select_random(eligible, n_total=10**6, seed=2).sum() == eligible.sum()


def test_random_baseline_is_not_biased_towards_low_indices():
    # One image, 8 eligible cells, pick 1: over many seeds every cell should be chosen sometimes.
    eligible = np.ones((1, 2, 4), dtype=bool)
    counts = sum(select_random(eligible, k_per_image=1, seed=s).astype(int) for s in range(400))
    assert counts.sum() == 400
    assert counts.min() > 25  # expected 50 each; a fixed/low-index choice would give zeros
