"""Decoding image and label files: the one place that turns a file into pixels.

Everything that reads a picture (the data scan, training, pseudo-labelling, evaluation,
`--images`, the annotation import) comes through here, so every reader fails the same way: one
exception whose message names the file.

Why PIL and not cv2.imread: cv2.imread crashes the process (segfault) on a file name that is not
valid UTF-8, even when the file does not exist, and it decodes a truncated JPEG into grey rows
with nothing but a libjpeg warning on stderr. PIL decodes the bytes we read ourselves and raises
on a truncated or corrupt file. (Its RGB pixels are the ones cv2 decodes: both use libjpeg-turbo
and zlib; tests/datasets/test_decode.py checks a JPEG and a PNG against cv2.imdecode.)

Label PNGs give their stored indices: 8-bit grey ("L") as is, 1-bit ("1", what
`Image.fromarray(mask.astype(bool)).save()` writes) as 0/1, and palette ("P", what VOC, CVAT
and many tools export) as the palette indices, never the colours. An RGB label is refused with
the conversion to do.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageFile

from core.errors import InputError, MissingInput
from core.io import printable  # noqa: F401 (source.py re-exports it)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never grey rows

# Label modes whose pixel values are class indices, and how numpy sees them.
_INDEX_MODES = {"L": "8-bit grey", "P": "palette (indices are read)", "1": "1-bit"}


class ImageReadError(InputError):
    """A file that is not a readable image of the expected kind; the message names the file."""



def check_utf8_name(path) -> None:
    """Refuse a file name that is not valid UTF-8: ids become file names, log lines and JSON
    keys of the run, none of which can hold it. Renaming the file is the fix."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ImageReadError(f"file name is not valid UTF-8: {printable(path)} "
                             f"(rename the file; ids of a run must be text)") from None


def _open(path, kind: str) -> Image.Image:
    """The decoded PIL image of `path` (fully loaded: a truncated file fails here)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInput(f"{kind} file not found: {printable(path)}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as err:
        # PIL's own words say what is wrong ("image file is truncated", "broken data stream").
        raise ImageReadError(f"cannot decode {kind} file (corrupt, truncated or not an image: "
                             f"{err}): {printable(path)}") from None
    return image


def read_rgb(path) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3); a missing or undecodable file is an error."""
    image = _open(path, "image")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_label_png(path) -> np.ndarray:
    """Decode a label image to uint8 (H, W) class indices, as they were written (see above)."""
    image = _open(path, "label")
    if image.mode not in _INDEX_MODES:
        hint = ("convert it to one index per pixel first, e.g. map each colour to its class id "
                "and save with PIL's Image.fromarray(ids.astype(np.uint8)).save(path)"
                if image.mode in ("RGB", "RGBA", "LA", "PA") else
                "save it as an 8-bit grey, palette or 1-bit PNG")
        raise ImageReadError(f"label file must be a single-channel 8-bit image of class ids (a grey, "
                             f"palette or 1-bit PNG), got mode {image.mode!r}; {hint}: {printable(path)}")
    return np.asarray(image, dtype=np.uint8).copy()  # "1" gives bool 0/1, "P" its indices
