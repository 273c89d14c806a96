"""datasets/view.py: the labeled / partial / pseudo-labeled view's targets against a pixel-by-pixel
reference, its errors naming the file, and its sample format."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets import EvalTransform, SegmentationView, ViewItem, build_source, full_view
from tests.helpers import make_camvid, write_png


def naive_target(gt, pseudo, cells, region):
    """Pixel-by-pixel reference for the view's target rule."""
    h, w = gt.shape
    out = np.full((h, w), 255, np.uint8)
    for y in range(h):
        for x in range(w):
            if cells is not None and cells[y // region[0], x // region[1]]:
                out[y, x] = gt[y, x]
            elif pseudo is not None:
                out[y, x] = pseudo[y, x]
    return out


def test_view_partial_and_pseudo_targets(tmp_path):
    make_camvid(tmp_path, size=(20, 30))
    src = build_source("camvid", tmp_path, "train")
    region = (8, 7)                                          # uneven edges: 3x5 cells
    rng = np.random.default_rng(5)
    cells = rng.random((3, 5)) < 0.5
    pseudo = rng.integers(0, 11, size=(20, 30)).astype(np.uint8)
    pseudo[rng.random((20, 30)) < 0.3] = 255
    pseudo_path = tmp_path / "pseudo" / "b.png"
    write_png(pseudo_path, pseudo)
    items = [ViewItem(0, cells, None), ViewItem(1, cells, str(pseudo_path)),
             ViewItem(2, None, str(pseudo_path)), ViewItem(0, "all", str(pseudo_path)),
             ViewItem(1, None)]
    view = SegmentationView(src, items, EvalTransform(), region_size=region)
    gts = [src.read(i)[1] for i in range(3)]
    expected = [naive_target(gts[0], None, cells, region),
                naive_target(gts[1], pseudo, cells, region),
                naive_target(gts[2], pseudo, None, region),
                gts[0], np.full((20, 30), 255, np.uint8)]
    for i, want in enumerate(expected):
        sample = view[i]
        np.testing.assert_array_equal(sample["label"].numpy(), want)
        assert sample["index"] == items[i].index and sample["id"] == src.ids[items[i].index]


def test_view_errors_name_the_file(tmp_path):
    make_camvid(tmp_path)
    src = build_source("camvid", tmp_path, "train")
    wrong = tmp_path / "pseudo_wrong.png"
    write_png(wrong, np.zeros((10, 30), np.uint8))
    with pytest.raises(ValueError, match="pseudo_wrong.png"):
        SegmentationView(src, [ViewItem(0, None, str(wrong))], EvalTransform())[0]
    out_of_range = tmp_path / "pseudo_bad.png"
    write_png(out_of_range, np.full((20, 30), 11, np.uint8))
    with pytest.raises(ValueError, match="pseudo_bad.png"):
        SegmentationView(src, [ViewItem(0, None, str(out_of_range))], EvalTransform())[0]
    with pytest.raises(ValueError, match="'a'"):          # 20x30 with 30x30 regions -> (1, 1)
        SegmentationView(src, [ViewItem(0, np.ones((2, 2), bool))], EvalTransform())[0]
    with pytest.raises(IndexError):
        SegmentationView(src, [ViewItem(3, "all")], EvalTransform())
    with pytest.raises(ValueError, match="revealed"):
        SegmentationView(src, [ViewItem(0, "some")], EvalTransform())


def test_view_sample_format_and_normalisation(tmp_path):
    written = make_camvid(tmp_path)
    src = build_source("camvid", tmp_path, "train")
    sample = full_view(src, EvalTransform())[0]
    assert set(sample) == {"image", "label", "id", "index"}
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 20, 30)
    assert sample["label"].dtype == torch.uint8 and sample["label"].shape == (20, 30)
    assert torch.equal(sample["image"], torch.tensor(written["a"][0]).permute(2, 0, 1))
