"""The synthetic street-scene generator: layout, determinism, write-once, atomicity (a generation
killed midway leaves no partial set), content."""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from datasets import CAMVID_CLASSES, EvalTransform, build_source, full_view
from datasets.synthetic import generate_synthetic
from tests.helpers import run_snippet

SMALL = dict(num_train=4, num_val=2, num_test=1, height=48, width=64, seed=3)


def read_all(root, split):
    src = build_source("synthetic", root, split)
    return src, [src.read(i) for i in range(len(src))]


def test_layout_and_loader(tmp_path):
    root = generate_synthetic(tmp_path / "syn", **SMALL)
    for split, count in (("train", 4), ("val", 2), ("test", 1)):
        lines = (root / f"{split}.txt").read_text().splitlines()
        assert len(lines) == count
        image, label = lines[0].split()
        assert image.startswith(f"{split}/") and label.startswith(f"{split}annot/")
        src, pairs = read_all(root, split)
        assert src.classes == CAMVID_CLASSES and len(src) == count
        for img, lab in pairs:
            assert img.shape == (48, 64, 3) and lab.shape == (48, 64)
            assert set(np.unique(lab).tolist()) <= set(range(11)) | {255}
    params = json.loads((root / "synthetic.json").read_text())
    assert {k: params[k] for k in SMALL} == SMALL
    ids = sum((build_source("synthetic", root, s).ids for s in ("train", "val", "test")), [])
    assert len(set(ids)) == len(ids)                          # no id shared between splits
    sample = full_view(build_source("synthetic", root, "train"), EvalTransform())[0]
    assert sample["image"].shape == (3, 48, 64)


def test_deterministic_and_seeded(tmp_path):
    a = generate_synthetic(tmp_path / "a", **SMALL)
    b = generate_synthetic(tmp_path / "b", **SMALL)
    c = generate_synthetic(tmp_path / "c", **{**SMALL, "seed": 4})
    for split in ("train", "val"):
        pa, pb, pc = (read_all(r, split)[1] for r in (a, b, c))
        for (ia, la), (ib, lb), (ic, lc) in zip(pa, pb, pc):
            assert np.array_equal(ia, ib) and np.array_equal(la, lb)
            assert not np.array_equal(ia, ic) and not np.array_equal(la, lc)
    # Train and val images come from different seeds too.
    assert not np.array_equal(read_all(a, "train")[1][0][0], read_all(a, "val")[1][0][0])


def test_second_call_with_same_parameters_does_nothing(tmp_path):
    root = generate_synthetic(tmp_path / "syn", **SMALL)
    sentinel = root / "train" / "synth_train_0000.png"
    before = sentinel.stat().st_mtime_ns
    (root / "marker").write_text("still here")
    assert generate_synthetic(tmp_path / "syn", **SMALL) == root
    assert sentinel.stat().st_mtime_ns == before and (root / "marker").exists()


def test_different_parameters_on_existing_folder(tmp_path):
    generate_synthetic(tmp_path / "syn", **SMALL)
    with pytest.raises(ValueError, match=r"synthetic\.json.*num_train"):
        generate_synthetic(tmp_path / "syn", **{**SMALL, "num_train": 5})
    other = tmp_path / "not_synthetic"
    other.mkdir()
    (other / "something.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not_synthetic"):
        generate_synthetic(other, **SMALL)
    with pytest.raises(ValueError, match="height"):
        generate_synthetic(tmp_path / "bad", **{**SMALL, "height": 0})


def test_empty_existing_folder_is_filled(tmp_path):
    (tmp_path / "syn").mkdir()
    root = generate_synthetic(tmp_path / "syn", **SMALL)
    assert (root / "synthetic.json").is_file()


@pytest.fixture(scope="module")
def street_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("streets") / "syn"
    generate_synthetic(root, num_train=30, num_val=10, num_test=0, height=96, width=128, seed=0)
    return root


def test_all_classes_present_and_void_small(street_set):
    _, pairs = read_all(street_set, "train")
    counts = np.bincount(np.concatenate([lab.ravel() for _, lab in pairs]), minlength=256)
    fractions = counts / counts.sum()
    assert (fractions[:11] > 0.001).all(), fractions[:11]
    assert 0 < fractions[255] < 0.02                          # void (raw 11) exists, but small
    images_with = [sum((lab == c).any() for _, lab in pairs) for c in range(11)]
    assert min(images_with) >= 3                              # each class in several scenes


def test_scenes_have_street_geometry(street_set):
    _, pairs = read_all(street_set, "train")
    for img, lab in pairs:
        rows = np.arange(lab.shape[0])[:, None].repeat(lab.shape[1], 1)
        sky, road = rows[lab == 0], rows[lab == 3]
        assert sky.size and road.size and sky.mean() < road.mean()
        assert (lab[-1] != 0).all()                           # no sky on the bottom row
        assert img.std() > 20                                 # not a flat picture


def test_classes_not_separable_by_colour_alone(street_set):
    """A colour-lookup classifier (majority class per 16-level RGB bin, fit on train) must do
    poorly on val: the classes share colour ranges and differ by texture, shape and position."""
    def pixels(split):
        _, pairs = read_all(street_set, split)
        rgb = np.concatenate([img.reshape(-1, 3) for img, _ in pairs]).astype(np.int64) // 16
        lab = np.concatenate([lab.ravel() for _, lab in pairs])
        keep = lab < 11
        return (rgb[:, 0] * 256 + rgb[:, 1] * 16 + rgb[:, 2])[keep], lab[keep]

    bins, labels = pixels("train")
    table = np.zeros((4096, 11))
    np.add.at(table, (bins, labels), 1)
    val_bins, val_labels = pixels("val")
    predicted = table.argmax(1)[val_bins]
    accuracy = (predicted == val_labels).mean()
    mean_recall = np.mean([(predicted[val_labels == c] == c).mean()
                           for c in range(11) if (val_labels == c).any()])
    assert accuracy < 0.7 and mean_recall < 0.45, (accuracy, mean_recall)


_DIE_WHILE_GENERATING = """
import os, signal, sys
from datasets import synthetic
real, calls = synthetic.render_sample, []
def dies_on_third(*args):
    calls.append(args)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
synthetic.render_sample = dies_on_third
synthetic.generate_synthetic(sys.argv[1], num_train=4, num_val=2, num_test=1, height=48, width=64, seed=3)
"""


@pytest.mark.slow
def test_synthetic_generation_killed_midway_leaves_no_partial_set(tmp_path):
    # A real SIGKILL: no except/finally block runs, whatever the generator cleans up on errors.
    killed = run_snippet(_DIE_WHILE_GENERATING, str(tmp_path / "syn"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "syn").exists()
    root = generate_synthetic(tmp_path / "syn", num_train=4, num_val=2, num_test=1, height=48, width=64, seed=3)
    assert [len(build_source("synthetic", root, split)) for split in ("train", "val", "test")] == [4, 2, 1]
