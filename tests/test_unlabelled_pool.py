"""A campaign on your own photos (query.oracle=human): the pool's unlabelled images need no label
file (a folder of images only, or image-only lines in a list file); the labelled seed and the
evaluation split keep theirs; with the ground-truth oracle a missing label stays an error."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import run_script
from tests.datasets.test_source import write_gray, write_rgb
from tests.datasets.test_folder import CLASSES, folder

H, W = 48, 64


def make_photos(root, labelled=("p0", "p1"), unlabelled=("p2", "p3", "p4", "p5")):
    """train/images: photos p0..p5, of which only `labelled` have a label; val: 2 labelled."""
    rng = np.random.default_rng(0)
    for split, names in (("train", labelled + unlabelled), ("val", ("v0", "v1"))):
        for name in names:
            write_rgb(root / split / "images" / f"{name}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
            if split == "val" or name in labelled:
                write_gray(root / split / "labels" / f"{name}.png", rng.integers(0, 3, (H, W)).astype(np.uint8))
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "seed.txt").write_text("".join(f"train/images/{n}.png train/labels/{n}.png\n" for n in labelled))


def test_an_unlabelled_image_is_an_error_unless_the_pool_may_hold_them(tmp_path):
    make_photos(tmp_path)
    with pytest.raises(FileNotFoundError, match="no label for image .*p2.png"):
        folder(tmp_path)
    src = folder(tmp_path, unlabeled_ok=True)
    assert src.ids == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert [src.has_label(i) for i in range(6)] == [True, True, False, False, False, False]
    image, label = src.read(3)
    assert image.shape == (H, W, 3) and label.shape == (H, W) and (label == 255).all()  # all void
    assert (src.read(0)[1] != 255).any()


def test_image_only_list_lines_are_for_a_pool_a_person_labels(tmp_path):
    make_photos(tmp_path)
    listing = tmp_path / "lists" / "pool.txt"
    listing.write_text("train/images/p0.png train/labels/p0.png\ntrain/images/p2.png\n")
    with pytest.raises(ValueError, match=r"pool.txt:2: expected 'image label'.*query.oracle=human"):
        folder(tmp_path, str(listing))
    src = folder(tmp_path, str(listing), unlabeled_ok=True)
    assert src.ids == ["p0", "p2"] and [src.has_label(0), src.has_label(1)] == [True, False]


def test_a_folder_of_photos_without_any_label_folder(tmp_path):
    make_photos(tmp_path, labelled=())
    assert not (tmp_path / "train" / "labels").exists()
    src = folder(tmp_path, unlabeled_ok=True)
    assert src.ids == ["p2", "p3", "p4", "p5"] and not any(src.has_label(i) for i in range(len(src)))


TINY = """
seed: 1
deterministic: true
data: {{dataset: folder, root: {root}, train_split: train, eval_split: val, classes: {classes},
        crop_size: [32, 48], workers: 0}}
model: {{backbone: mobilenet_v2, pretrained: none, rep_dim: 8}}
loss: {{num_queries: 8, num_negatives: 16}}
runtime: {{device: cpu, amp: none}}
query: {{region_size: [16, 16], regions_per_image: 2, vis_images: 1}}
stage_defaults: {{epochs: 1, iters_per_epoch: 2, init: scratch}}
stages:
  teacher: {{kind: supervised, batch_labeled: 2}}
  query1: {{kind: query, batch_labeled: 1, batch_unlabeled: 2, init: teacher}}
output_dir: {out}
"""


@pytest.mark.slow
def test_a_campaign_on_photos_with_two_labelled_starts_and_asks_for_the_rest(tmp_path):
    from core.cli import EXIT_AWAITING_LABELS
    root = tmp_path / "photos"
    make_photos(root)
    cfg = tmp_path / "photos.yaml"
    cfg.write_text(TINY.format(root=root, classes=CLASSES, out=tmp_path / "run"))
    seed = f"data.labeled_split={root / 'lists' / 'seed.txt'}"
    # The ground-truth oracle reads labels that do not exist: one error line naming the file.
    truth = run_script("train_al.py", cfg, seed)
    assert truth.returncode == 2 and "p2.png" in truth.stderr and "Traceback" not in truth.stderr, truth.stderr[-2000:]
    # A person labels the pool, but the seed must be named (a random draw could pick p2).
    unnamed = run_script("train_al.py", cfg, "query.oracle=human")
    assert unnamed.returncode == 2 and "data.labeled_split" in unnamed.stderr, unnamed.stderr[-2000:]
    result = run_script("train_al.py", cfg, "query.oracle=human", seed)
    assert result.returncode == EXIT_AWAITING_LABELS, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "01_query1" / "annotate" / "manifest.json").read_text())
    assert sorted(item["id"] for item in manifest["items"]) == ["p2", "p3", "p4", "p5"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"][0]["labeled_pixel_pct"] == pytest.approx(100 * 2 / 6)
