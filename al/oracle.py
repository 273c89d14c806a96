"""Where the labels of revealed regions come from, and what they hold.

`query.oracle: ground_truth` (the paper's simulation): revealed cells take the dataset's labels.
`query.oracle: human`: once a query stage has selected its regions it writes an annotation task
(`annotate/`, see al/annotate.py) and raises `AwaitingLabels`, which train_al.py turns into exit
code 3 (summary.json state `waiting_for_labels`); the same command run again checks every label file the annotator wrote (a bad one: one `error:` line, exit code 2,
nothing changed), stores them in the stage folder (`human_labels/`) and the stage goes on. From
then on, every training view reads those cells from the newest human-label PNG of the image.

`view_items` says, per image, which training view it joins and where its revealed labels come
from; `class_pixels` counts per class what a query revealed and what the pool holds after it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datasets import SegmentationView, ViewItem
from core.labels import IGNORE_INDEX
from datasets.source import read_label_png
from al import annotate
from core import distributed as dist_utils
from al.pseudo import pseudo_label_file
from core.errors import RunInputError
from query.pool import LabelPool
from query.visualize import annotation_preview

HUMAN_LABELS = "human_labels"
ANNOTATE = "annotate"
PREDICTION = "prediction"  # a human query stage's plain argmax per image (pre-annotations)
VOID = "void"  # key of the void / ignored pixels in class-pixel counts


# ----------------------------------------------------------------------------- training views
def view_items(pool: LabelPool, ids: list[str], pseudo_dir: Path | None,
               human_paths: dict[int, str]) -> tuple[list[ViewItem], list[ViewItem]]:
    """(labeled items, pseudo items) of the training views.

    Labeled view (weak aug): every image whose cells are all labeled, plus — when there are no
    pseudo labels — the revealed cells of partially labeled ones. Pseudo view (strong aug): every
    other image, with its revealed cells and the teacher's confident labels elsewhere. Revealed
    cells read the image's human-label PNG when it has one (even when every cell is revealed:
    "all" would mean the dataset's labels), else the dataset's labels."""
    labeled, pseudo = [], []
    for i in range(len(pool)):
        cells, human = pool.cells[i], human_paths.get(i)
        if cells.all() and human is None:
            labeled.append(ViewItem(i, "all"))
        elif pseudo_dir is None or cells.all():
            if cells.any():
                labeled.append(ViewItem(i, cells.copy(), None, human))
        else:
            path = str(pseudo_label_file(pseudo_dir, ids[i]))
            pseudo.append(ViewItem(i, cells.copy() if cells.any() else None, path, human))
    return labeled, pseudo


def human_label_paths(stage_dirs: list[Path], ids: list[str]) -> dict[int, str]:
    """{image index: newest human-label PNG} over `stage_dirs` (in stage order)."""
    index = {annotate.file_name(image_id): i for i, image_id in enumerate(ids)}
    found: dict[int, str] = {}
    for stage_dir in stage_dirs:
        folder = Path(stage_dir) / HUMAN_LABELS
        for png in sorted(folder.glob("*.png")) if folder.is_dir() else ():
            if png.name not in index:
                raise RunInputError(f"{png}: human labels of an image that is not in the training pool")
            found[index[png.name]] = str(png)  # a later stage's file holds every earlier label too
    return found


# ----------------------------------------------------------------------------- human annotator
class AwaitingLabels(Exception):
    """A query stage waits for a person's labels (not an error: the campaign goes on once they are
    written). The scripts turn it into their own exit status, after the run recorded the state in
    summary.json (`record()`)."""

    def __init__(self, stage: str, manifest: Path, missing: int, total: int):
        self.stage, self.manifest, self.missing, self.total = stage, Path(manifest).resolve(), missing, total
        super().__init__(f"[{stage}] waiting for labels: {missing} of {total} label files of {self.manifest} "
                         f"are still to write")

    def record(self) -> dict:
        return {"stage": self.stage, "manifest": str(self.manifest), "label_files_missing": self.missing,
                "label_files": self.total}


def reveal_by_human(*, stage_dir: Path, stage: str, earlier_dirs: list[Path], src, pool: LabelPool,
                    new: np.ndarray, scores: np.ndarray, ctx, logger, partial: bool = False) -> np.ndarray:
    """The cells of `new` that a person labelled, once they are imported (importing them now if
    the annotator's files are there and valid). Without them: write the annotation task when it
    is not there yet and raise AwaitingLabels; a bad file raises RunInputError naming it (nothing
    written). With `partial`, the images whose label file exists are imported and the others
    stay unlabelled (their cells are not revealed; a later query may select them again)."""
    done = stage_dir / HUMAN_LABELS
    if done.is_dir():
        _check_selection(done / annotate.SELECTION, src.ids, new, RunInputError)
        try:
            imported = annotate.read_imported(done)
        except annotate.AnnotationError as err:
            raise RunInputError(str(err)) from None
        return new if imported is None else _only(new, src.ids, imported)
    manifest = stage_dir / ANNOTATE / annotate.MANIFEST
    asked = int(new.any(axis=(1, 2)).sum())
    if not manifest.is_file():
        if ctx.is_main:
            _write_task(stage_dir / ANNOTATE, stage, src, pool, new, scores, stage_dir / PREDICTION)
        dist_utils.barrier(ctx)
        _log_task(manifest, stage, new, src.num_classes, logger)
        raise AwaitingLabels(stage, manifest, asked, asked)
    verdict = None
    if ctx.is_main:  # one reader decides; every rank gets the same verdict
        try:
            verdict = _import(stage_dir, earlier_dirs, src, pool, new, partial)
        except annotate.AnnotationError as err:
            verdict = ("error", str(err))
    verdict = dist_utils.broadcast_object(verdict, ctx)
    if verdict[0] == "error":
        raise RunInputError(verdict[1])
    if verdict[0] == "waiting":
        logger.log(f"[{stage}] {verdict[1]} of {asked} label files are missing"
                   + ("" if verdict[1] == asked else "; pass --import-partial to import the ones written "
                      "and leave the other images unlabelled"))
        raise AwaitingLabels(stage, manifest, verdict[1], asked)
    dist_utils.barrier(ctx)
    imported = verdict[1]
    logger.log(f"[{stage}] imported human labels of {len(imported)} of {asked} images from {manifest}")
    return _only(new, src.ids, imported)


def import_record(asked: np.ndarray, labelled: np.ndarray, grid, ids: list[str]) -> dict:
    """What a human import took of what the query asked (summary.json `human_import`): images,
    regions and pixels, and the ids of the images left unlabelled by a partial import."""
    asked_images, labelled_images = asked.any(axis=(1, 2)), labelled.any(axis=(1, 2))
    return {"images_asked": int(asked_images.sum()), "images_labelled": int(labelled_images.sum()),
            "regions_asked": int(asked.sum()), "regions_labelled": int(labelled.sum()),
            "pixels_asked": int((asked * grid.cell_areas).sum()),
            "pixels_labelled": int((labelled * grid.cell_areas).sum()),
            "not_labelled": [ids[i] for i in np.flatnonzero(asked_images & ~labelled_images)]}


def _only(new: np.ndarray, ids: list[str], imported: list[str]) -> np.ndarray:
    """`new` with the cells of images not in `imported` cleared."""
    keep = np.isin(np.array(ids, dtype=object), np.array(imported, dtype=object))
    return new & keep[:, None, None]


def _import(stage_dir: Path, earlier_dirs: list[Path], src, pool: LabelPool, new: np.ndarray,
            partial: bool) -> tuple:
    """("waiting", missing label files) or ("imported", ids), after writing human_labels/."""
    folder = stage_dir / ANNOTATE
    _check_selection(folder / annotate.SELECTION, src.ids, new, annotate.AnnotationError)
    chosen = np.flatnonzero(new.any(axis=(1, 2)))
    regions = {src.ids[i]: pool.grid.expand(new[i]) for i in chosen}
    written = annotate.written_labels(folder / annotate.MANIFEST, regions)
    missing = len(regions) - len(written)
    if not written or (missing and not partial):
        return "waiting", missing
    labels = annotate.read_annotations(folder / annotate.MANIFEST, regions, src.num_classes, only=written)
    previous = human_label_paths(earlier_dirs, src.ids)
    out = {}
    for i in chosen:
        image_id = src.ids[i]
        if image_id not in labels:
            continue
        if pool.cells[i].any() and i not in previous:
            raise annotate.AnnotationError(f"{stage_dir}: image {image_id!r} has cells revealed before this stage "
                                           f"but no human labels in an earlier stage's {HUMAN_LABELS}/")
        earlier = read_label_png(previous[i]) if i in previous else None
        out[image_id] = annotate.cumulative(earlier, labels[image_id], regions[image_id])
    annotate.write_label_folder(stage_dir / HUMAN_LABELS, out, folder / annotate.SELECTION)
    return "imported", sorted(out)


def _write_task(folder: Path, stage: str, src, pool: LabelPool, new: np.ndarray, scores: np.ndarray,
                prediction_dir: Path) -> None:
    tasks = []
    rh, rw = pool.grid.region
    for i in np.flatnonzero(new.any(axis=(1, 2))):
        image, _ = src.read(i)
        # The annotator labels the image the model saw: the file itself, or a copy at the
        # working resolution when the run resizes (data.resize).
        path = os.path.abspath(src.image_path(i)) if src.resize is None else None
        cells = np.argwhere(new[i])
        boxes = [[int(c * rw), int(r * rh), int(min(rw, pool.grid.width - c * rw)), int(min(rh, pool.grid.height - r * rh))]
                 for r, c in cells]
        prediction = pseudo_label_file(prediction_dir, src.ids[i])
        tasks.append(annotate.Task(id=src.ids[i], image_path=path, image=image, regions=pool.grid.expand(new[i]),
                                   preview=annotation_preview(image, pool.grid, pool.cells[i], new[i]),
                                   boxes=boxes, score=float(scores[i][new[i]].mean()),
                                   prediction=read_label_png(str(prediction)) if prediction.is_file() else None))
    annotate.write_task(folder, stage, list(src.classes), tasks, src.ids, new, palette=src.palette.tolist())


def _log_task(manifest: Path, stage: str, new: np.ndarray, num_classes: int, logger) -> None:
    logger.log(
        f"[{stage}] {int(new.sum())} regions of {int(new.any(axis=(1, 2)).sum())} images await a human annotator "
        f"(query.oracle=human).\n"
        f"  manifest: {manifest.resolve()}\n"
        f"  For every item, write a single-channel 8-bit PNG of class ids (0..{num_classes - 1}, "
        f"{IGNORE_INDEX} = void) at the image's size to its `label` path;\n"
        f"  only pixels inside its `regions` mask are read (`preview/` shows them over the image).\n"
        f"  Then run the same command again: the labels are checked, imported, and the run continues.")


def _check_selection(path: Path, ids: list[str], new: np.ndarray, error) -> None:
    saved_ids, saved = annotate.read_selection(path)
    if saved_ids != list(ids) or saved.shape != new.shape or not np.array_equal(saved, new):
        raise error(f"{path}: the regions selected now differ from those the annotation was made for "
                    f"(were the scores recomputed?); delete {path.parent} and run the same command again")


def copy_human_labels(source_dir: Path, stage_dir: Path) -> None:
    """A stage reused from another run (init_from) brings its human labels along."""
    if (source_dir / HUMAN_LABELS).is_dir() and not (stage_dir / HUMAN_LABELS).is_dir():
        annotate.copy_label_folder(source_dir / HUMAN_LABELS, stage_dir / HUMAN_LABELS)


# ----------------------------------------------------------------------------- what queries pick
def class_pixels(src, pool: LabelPool, new: np.ndarray, human_paths: dict[int, str], ctx) -> dict:
    """{"queried_class_pixels": {class: n, ..., "void": n}, "pool_class_pixels": {...}}: pixels per
    class among the cells this query revealed, and among every labeled pixel of `pool` (the pool
    after the query), by the labels as revealed (dataset or annotator). Each rank reads a shard."""
    items, _ = view_items(pool, src.ids, None, human_paths)
    view = SegmentationView(src, items, transform=None, region_size=pool.grid.region)
    bins = src.num_classes + 1  # the last one counts void
    queried, labeled = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
    for j in dist_utils.shard(list(range(len(items))), ctx):
        i = items[j].index
        _, target = view.load(j)
        ids = np.where(target == IGNORE_INDEX, bins - 1, target)
        labeled += np.bincount(ids[pool.grid.expand(pool.cells[i])], minlength=bins)
        queried += np.bincount(ids[pool.grid.expand(new[i])], minlength=bins)
    parts = dist_utils.all_gather_objects((queried, labeled), ctx)  # every rank's shard, ours included
    queried, labeled = sum(p[0] for p in parts), sum(p[1] for p in parts)
    names = list(src.classes) + [VOID]
    return {"queried_class_pixels": dict(zip(names, map(int, queried))),
            "pool_class_pixels": dict(zip(names, map(int, labeled)))}
