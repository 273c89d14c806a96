"""datasets/decode.py: label PNGs give their indices (8-bit, 1-bit and palette PNGs), and the decoded
pixels are the ones cv2 decodes (a PNG and a JPEG)."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.helpers import png_bytes


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["L", "1", "P"])
def test_label_pngs_give_their_indices(tmp_path, mode):
    from datasets.decode import read_label_png
    ids = np.zeros((6, 8), np.uint8)
    ids[2:4, 3:7] = 1
    if mode == "P":
        ids[0, 0] = 7
        # Colours that are not the indices: reading colours (or grey levels) would give other values.
        data = png_bytes(ids, palette=[9, 9, 9, 200, 10, 10] + [0, 0, 0] * 5 + [1, 2, 3] + [0, 0, 0] * 248)
        assert Image.open(io.BytesIO(data)).mode == "P"
    else:
        data = png_bytes(ids, mode="1" if mode == "1" else None)
        assert Image.open(io.BytesIO(data)).mode == mode
    (tmp_path / "l.png").write_bytes(data)
    np.testing.assert_array_equal(read_label_png(tmp_path / "l.png"), ids)


@pytest.mark.slow
def test_decoded_pixels_are_the_ones_cv2_decodes(tmp_path):
    """The switch to PIL changes no image: the same RGB as cv2.imdecode for a PNG and a JPEG."""
    from datasets.decode import read_rgb
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur((rng.random((37, 53, 3)) * 255).astype(np.uint8), (5, 5), 2)
    for name, encoded in (("a.png", cv2.imencode(".png", rgb)[1]), ("a.jpg", cv2.imencode(".jpg", rgb)[1])):
        (tmp_path / name).write_bytes(encoded.tobytes())
        ours = read_rgb(tmp_path / name)
        theirs = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(ours, theirs)
