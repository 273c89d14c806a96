import os

import numpy as np
import pytest
import torch

from query.pool import LabelPool, RegionGrid

# An uneven grid: 50 = 3*16 + 2 rows, 70 = 4*16 + 6 columns -> 4 x 5 cells, smaller edges.
H, W, R = 50, 70, 16


def make_grid():
    return RegionGrid(height=H, width=W, region=(R, R))


def ids_of(n):
    return [f"img_{i:03d}" for i in range(n)]


def test_grid_shape_and_areas_by_hand():
    grid = make_grid()
    assert grid.shape == (4, 5)
    assert grid.cell_areas.dtype == np.int64
    assert grid.cell_areas[0, 0] == 256
    assert grid.cell_areas[3, 0] == 2 * 16
    assert grid.cell_areas[0, 4] == 16 * 6
    assert grid.cell_areas[3, 4] == 2 * 6
    assert grid.cell_areas.sum() == H * W


def test_grid_expand_matches_pixel_to_cell_lookup():
    grid = make_grid()
    cells = np.random.default_rng(1).random((2, 4, 5)) > 0.5
    pixels = grid.expand(cells)
    assert pixels.shape == (2, H, W) and pixels.dtype == bool
    for y in range(H):
        for x in range(W):
            assert (pixels[:, y, x] == cells[:, y // R, x // R]).all()


def naive_cell_sums(values):
    out = np.zeros(values.shape[:-2] + (4, 5), dtype=np.float64)
    for r in range(4):
        for c in range(5):
            out[..., r, c] = values[..., r * R:(r + 1) * R, c * R:(c + 1) * R].sum(axis=(-2, -1))
    return out


def test_cell_sums_numpy_and_torch_match_naive_loop():
    grid = make_grid()
    values = np.random.default_rng(2).random((3, 2, H, W))
    expected = naive_cell_sums(values)
    np.testing.assert_allclose(grid.cell_sums(values), expected, rtol=1e-12)
    torch_sums = grid.cell_sums(torch.from_numpy(values))
    assert isinstance(torch_sums, torch.Tensor) and torch_sums.shape == (3, 2, 4, 5)
    np.testing.assert_allclose(torch_sums.numpy(), expected, rtol=1e-12)
    # bool masks count pixels exactly
    mask = values[0, 0] > 0.3
    np.testing.assert_array_equal(grid.cell_sums(mask), naive_cell_sums(mask.astype(np.int64)))


def test_grid_rejects_bad_sizes():
    with pytest.raises(ValueError, match="region rows"):
        RegionGrid(10, 10, (0, 4))
    with pytest.raises(ValueError, match="cell_sums"):
        make_grid().cell_sums(np.zeros((H, W + 1)))


def test_initial_draws_seeded_whole_images():
    grid = make_grid()
    pool = LabelPool.initial(ids_of(50), grid, fraction=0.10, seed=3)
    assert pool.cycle == 0
    assert len(pool.fully_labeled()) == 5
    assert pool.partially_labeled() == []
    per_image = pool.cells.reshape(50, -1)
    assert set(per_image.sum(axis=1).tolist()) == {0, 20}  # whole images or nothing
    again = LabelPool.initial(ids_of(50), grid, fraction=0.10, seed=3)
    np.testing.assert_array_equal(again.cells, pool.cells)
    other = LabelPool.initial(ids_of(50), grid, fraction=0.10, seed=4)
    assert other.fully_labeled() != pool.fully_labeled()
    assert pool.labeled_pixel_fraction() == pytest.approx(0.10, abs=0)


def test_from_labeled_ids_and_errors():
    grid = make_grid()
    pool = LabelPool.from_labeled_ids(ids_of(6), grid, ["img_004", "img_001"])
    assert pool.fully_labeled() == [1, 4]
    assert pool.ids == ids_of(6)
    with pytest.raises(ValueError, match="img_999"):
        LabelPool.from_labeled_ids(ids_of(6), grid, ["img_999"])
    with pytest.raises(ValueError, match="appears twice"):
        LabelPool(["a", "a"], grid, np.zeros((2, 4, 5), dtype=bool))


def test_labeled_pixel_fraction_exact_on_uneven_grid():
    grid = make_grid()
    cells = np.zeros((2, 4, 5), dtype=bool)
    cells[0, 3, 4] = True  # corner cell: 2 x 6 = 12 pixels
    cells[1, 0, 0] = True  # full cell: 256 pixels
    cells[1, 3, 1] = True  # bottom edge cell: 2 x 16 = 32 pixels
    pool = LabelPool(["a", "b"], grid, cells)
    assert pool.labeled_pixel_fraction() == (12 + 256 + 32) / (2 * 50 * 70)
    assert pool.partially_labeled() == [0, 1]
    assert pool.fully_labeled() == []
    np.testing.assert_array_equal(pool.unlabeled_cells_mask(), ~cells)
    assert pool.labeled_pixel_mask(0).sum() == 12


def test_labeled_valid_pixel_fraction_against_pixel_count():
    grid = make_grid()
    rng = np.random.default_rng(5)
    void = rng.random((3, H, W)) < 0.3
    cells = rng.random((3, 4, 5)) < 0.4
    pool = LabelPool(ids_of(3), grid, cells)
    valid_counts = grid.cell_sums(~void)
    labeled_pixels = grid.expand(cells)
    expected = (labeled_pixels & ~void).sum() / (~void).sum()
    assert pool.labeled_valid_pixel_fraction(valid_counts) == pytest.approx(expected, rel=1e-15)
    with pytest.raises(ValueError, match="shape"):
        pool.labeled_valid_pixel_fraction(valid_counts[:2])
    with pytest.raises(ValueError, match="integer"):
        pool.labeled_valid_pixel_fraction(valid_counts.astype(float))
    with pytest.raises(ValueError, match="no valid"):
        pool.labeled_valid_pixel_fraction(np.zeros_like(valid_counts))


def test_reveal_grows_pool_and_records_history():
    grid = make_grid()
    pool = LabelPool.from_labeled_ids(ids_of(3), grid, ["img_000"])
    new = np.zeros((3, 4, 5), dtype=bool)
    new[1, 0, 0] = new[1, 3, 4] = new[2, 2, 2] = True
    grown = pool.reveal(new, budget=3)
    assert grown.cycle == 1 and pool.cycle == 0
    assert not pool.cells[1].any()  # the old pool is untouched
    np.testing.assert_array_equal(grown.cells, pool.cells | new)
    assert [h["cycle"] for h in grown.history] == [0, 1]
    assert grown.history[0]["regions_added"] == 20
    assert grown.history[1]["regions_added"] == 3
    expected_pct = 100.0 * (3500 + 256 + 12 + 256) / (3 * 3500)
    assert grown.history[1]["labeled_pixel_pct"] == pytest.approx(expected_pct, rel=1e-15)
    assert len(pool.history) == 1
    grown.check_grows_from(pool)
    with pytest.raises(ValueError):
        pool.cells[0, 0, 0] = False  # read-only: nobody can shrink a pool in place


def test_reveal_invariant_errors_name_the_problem():
    grid = make_grid()
    pool = LabelPool.from_labeled_ids(ids_of(3), grid, ["img_002"])
    twice = np.zeros((3, 4, 5), dtype=bool)
    twice[2, 1, 3] = True
    with pytest.raises(ValueError, match=r"queried twice.*img_002.*row 1, col 3"):
        pool.reveal(twice, budget=10)
    over = np.zeros((3, 4, 5), dtype=bool)
    over[0, :, 0] = True
    with pytest.raises(ValueError, match="budget exceeded: 4 regions.*budget is 3"):
        pool.reveal(over, budget=3)
    with pytest.raises(ValueError, match="shape"):
        pool.reveal(np.zeros((2, 4, 5), dtype=bool), budget=3)
    with pytest.raises(ValueError, match="bool"):
        pool.reveal(np.zeros((3, 4, 5), dtype=np.int64), budget=3)


def test_check_grows_from_detects_shrink():
    grid = make_grid()
    earlier = LabelPool.from_labeled_ids(ids_of(3), grid, ["img_001"])
    cells = earlier.cells.copy()
    cells[1, 2, 4] = False
    later = LabelPool(ids_of(3), grid, cells, cycle=1)
    with pytest.raises(ValueError, match=r"shrank.*img_001.*row 2, col 4"):
        later.check_grows_from(earlier)
    with pytest.raises(ValueError, match="different images"):
        LabelPool(ids_of(4), grid, np.ones((4, 4, 5), dtype=bool)).check_grows_from(earlier)


@pytest.mark.parametrize("name", ["pool_cycle1.npz", "pool_cycle1.bin"])
def test_save_load_round_trip(tmp_path, name):
    grid = make_grid()
    pool = LabelPool.initial(ids_of(7), grid, fraction=0.3, seed=0)
    new = np.zeros((7, 4, 5), dtype=bool)
    unlabeled = [i for i in range(7) if i not in pool.fully_labeled()]
    new[unlabeled[0], 3, 4] = new[unlabeled[1], 0, 2] = True
    pool = pool.reveal(new, budget=2)
    path = tmp_path / name
    pool.save(path)
    assert sorted(os.listdir(tmp_path)) == [name]  # no ".npz" appended, no temporary left behind
    loaded = LabelPool.load(path)
    np.testing.assert_array_equal(loaded.cells, pool.cells)
    assert loaded.ids == pool.ids
    assert loaded.grid == pool.grid
    assert loaded.cycle == 1
    assert loaded.history == pool.history
    loaded.check_grows_from(LabelPool.initial(ids_of(7), grid, fraction=0.3, seed=0))
    # compact: 7 images x 20 cells fit in 18 bytes of bits; the file is small
    assert path.stat().st_size < 4096


def test_load_rejects_truncated_and_garbage_files(tmp_path):
    grid = make_grid()
    path = tmp_path / "pool.npz"
    LabelPool.initial(ids_of(20), grid, fraction=0.5, seed=1).save(path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.npz"):
        LabelPool.load(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a pool at all")
    with pytest.raises(ValueError, match="garbage.npz"):
        LabelPool.load(garbage)
    wrong = tmp_path / "wrong.npz"
    with open(wrong, "wb") as handle:
        np.savez(handle, something=np.zeros(3))
    with pytest.raises(ValueError, match=r"wrong.npz.*lacks"):
        LabelPool.load(wrong)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        LabelPool.load(tmp_path / "missing.npz")


def test_every_damaged_file_loads_identically_or_fails_naming_path(tmp_path):
    """Cut the file at many lengths and flip bytes all over it: a damaged pool must never load
    as a *different* pool, and every failure is a ValueError naming the file."""
    grid = make_grid()
    original = LabelPool.initial(ids_of(20), grid, fraction=0.5, seed=1)
    path = tmp_path / "pool.npz"
    original.save(path)
    data = path.read_bytes()
    damaged = tmp_path / "damaged.npz"
    variants = [data[:n] for n in range(0, len(data), 37)]
    for i in range(0, len(data), 11):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        variants.append(bytes(flipped))
    for blob in variants:
        damaged.write_bytes(blob)
        try:
            loaded = LabelPool.load(damaged)
        except ValueError as err:
            assert "damaged.npz" in str(err)
            continue
        np.testing.assert_array_equal(loaded.cells, original.cells)
        assert loaded.ids == original.ids and loaded.history == original.history


def test_whole_image_pool_refines_to_a_region_grid():
    whole = RegionGrid(6, 9, (6, 9))
    pool = LabelPool(["a", "b", "c"], whole, np.array([False, True, False]).reshape(3, 1, 1))
    fine = RegionGrid(6, 9, (3, 4))  # 2 x 3 cells, the last column 1 px wide
    refined = pool.on_grid(fine)
    assert refined.grid == fine and refined.ids == pool.ids
    assert refined.cells[1].all() and not refined.cells[[0, 2]].any()
    for i in range(3):  # pixel by pixel: the labeled area has not changed
        np.testing.assert_array_equal(refined.labeled_pixel_mask(i), pool.labeled_pixel_mask(i))
    assert refined.labeled_pixel_fraction() == pool.labeled_pixel_fraction() == 1 / 3
    assert refined.history[0]["regions_added"] == 6  # one image = 6 cells
    assert pool.on_grid(whole) is pool
    with pytest.raises(ValueError, match="only a whole-image pool"):
        refined.on_grid(RegionGrid(6, 9, (2, 3)))
    with pytest.raises(ValueError, match="cannot move"):
        pool.on_grid(RegionGrid(6, 8, (3, 4)))
