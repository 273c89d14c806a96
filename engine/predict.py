"""Predictions written as image files: `<id>.png` (class ids, a palette PNG that shows the data
set's colours) and `<id>_color.png` per image, at the working resolution; and the folder of
unlabeled images (`ImageFolder`) that evaluate.py --images predicts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core import distributed
from core.errors import MissingInput
from core.io import atomic_write_index_png, atomic_write_png, flat_name
from datasets.classes import colorize
from datasets.source import IMAGE_SUFFIXES, check_utf8_name, read_rgb, resize_pair
from engine import data as data_utils
from engine.inference import config_settings, predict_loader


class ImageFolder(Dataset):
    """The png/jpg images of a folder (no labels), at the working resolution, as uint8 tensors."""

    def __init__(self, folder: Path, resize):
        if not folder.is_dir():
            raise MissingInput(f"--images: folder not found: {folder}")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise MissingInput(f"--images: no .png/.jpg images in {folder}")
        for path in self.paths:
            check_utf8_name(path)  # its id names the prediction files
        self.ids = [p.stem for p in self.paths]
        if len(set(self.ids)) != len(self.ids):
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise ValueError(f"--images: two images named {dup!r} in {folder} (outputs would collide)")
        self.resize = tuple(resize) if resize else None

    def __len__(self) -> int:
        return len(self.paths)

    def check(self, indices) -> None:
        """Decode the images once before predicting: a bad file is then one clear error here,
        not an exception wrapped in a data-loader worker's traceback."""
        for i in indices:
            read_rgb(str(self.paths[i]))

    def __getitem__(self, i: int) -> dict:
        img = read_rgb(str(self.paths[i]))
        if self.resize is not None:  # the same interpolation as the data sources use
            img, _ = resize_pair(img, np.zeros(img.shape[:2], np.uint8), self.resize)
        return {"image": torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), "index": i}


def prediction_writer(ids, palette, out_dir: Path):
    """A callback (samples, probs) -> `<id>.png` (class ids) and `<id>_color.png` per image."""
    def write(group: dict, probs: torch.Tensor) -> None:
        preds = probs.argmax(1).to(torch.uint8).cpu().numpy()
        for index, pred in zip(group["index"].tolist(), preds):
            stem = flat_name(ids[index])
            atomic_write_index_png(out_dir / f"{stem}.png", pred, palette)  # ids, shown in the palette
            atomic_write_png(out_dir / f"{stem}_color.png", colorize(pred, palette))
    return write


def save_predictions(model, dataset, ids, palette, out_dir: Path, cfg, ctx, amp: str) -> None:
    """This rank's shard of an unlabeled `dataset`, predicted exactly as the evaluation predicts
    (eval.* settings and batch size) and written by `prediction_writer`; one class per colour
    of `palette`."""
    mine = distributed.shard(list(range(len(dataset))), ctx)
    loader = data_utils.ordered_loader(dataset, mine, cfg.eval.batch_size, ctx, workers=cfg.data.workers)
    settings = config_settings(cfg, scales=cfg.eval.scales, flip=cfg.eval.flip, amp=amp)
    write = prediction_writer(ids, palette, out_dir)
    for group, probs in predict_loader(model, loader, ctx.device, len(palette), settings,
                                       desc="predictions", show=ctx.is_main):
        write(group, probs)
