"""Label Studio round trip of a human query's annotation task (`query.oracle: human`).

Export (from the task's manifest.json):
  - `labelstudio_tasks.json`: one task per image, sortable by `data.score` (the mean acquisition
    score of its queried regions, higher = more uncertain), with a pre-annotation ("prediction")
    holding each queried region as a rectangle (`regions`) and the model's prediction inside the
    regions as one brush layer per class (`label`, Label Studio's brush RLE);
  - `labelstudio_config.xml`: the labelling interface for the data set's classes and colours.
Import (a Label Studio "JSON" export of the project): each task's newest annotation that was not
cancelled, its brush layers painted in list order (a later layer wins), everything unpainted
void; drawn at another size than the working one, resized (nearest). The label PNGs go where the
manifest says (`labels/<id>.png`); tasks without an annotation get no file (see --import-partial).

The RLE codec is label-studio-sdk's (`label_studio_sdk.converter.brush`), not our own:
`pip install -r requirements-labelling.txt`.
"""
from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from al.annotate import AnnotationError, read_manifest, resolve, store_labels

IMAGE, LABEL, REGIONS = "image", "label", "regions"  # tag names of the labelling config
REGION_LABEL = "query region"
TASKS, CONFIG = "labelstudio_tasks.json", "labelstudio_config.xml"


def _brush():
    try:
        from label_studio_sdk.converter import brush
    except ImportError as err:
        raise AnnotationError(f"Label Studio files need label-studio-sdk ({err}); "
                              f"pip install -r requirements-labelling.txt") from None
    return brush


def labelling_config(classes: list[str], palette: list | None) -> str:
    """The Label Studio labelling config: brush labels for the classes (data set colours), and the
    queried regions as rectangles."""
    colours = palette or [[255, 0, 0]] * len(classes)
    labels = "\n".join(f'    <Label value={quoteattr(c)} background="#{r:02x}{g:02x}{b:02x}"/>'
                       for c, (r, g, b) in zip(classes, colours))
    return (f'<View>\n  <Header value="Label the pixels inside the yellow query regions (sort tasks by score)"/>\n'
            f'  <Image name="{IMAGE}" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="{LABEL}" toName="{IMAGE}">\n{labels}\n  </BrushLabels>\n'
            f'  <RectangleLabels name="{REGIONS}" toName="{IMAGE}">\n'
            f'    <Label value="{REGION_LABEL}" background="#ffff00"/>\n  </RectangleLabels>\n</View>\n')


def export_tasks(manifest_path: Path, image_url) -> list[dict]:
    """Label Studio tasks of a manifest; `image_url(path)` gives the URL Label Studio loads an
    image from (e.g. its local-files route)."""
    from al.annotate import read_mask  # the regions/prediction PNGs we wrote ourselves
    brush = _brush()
    manifest = read_manifest(manifest_path)
    stage, classes = manifest["stage"], manifest["classes"]
    tasks = []
    for item in manifest["items"]:
        height, width = int(item["height"]), int(item["width"])
        regions = read_mask(resolve(manifest_path, item["regions"])) == 255
        result = [{"id": f"r{n}", "type": "rectanglelabels", "from_name": REGIONS, "to_name": IMAGE,
                   "original_width": width, "original_height": height, "image_rotation": 0,
                   "value": {"x": 100.0 * x / width, "y": 100.0 * y / height, "width": 100.0 * w / width,
                             "height": 100.0 * h / height, "rotation": 0, "rectanglelabels": [REGION_LABEL]}}
                  for n, (x, y, w, h) in enumerate(item.get("boxes", []))]
        if "prediction" in item:
            prediction = read_mask(resolve(manifest_path, item["prediction"]))
            for c in np.unique(prediction[regions]):
                if c >= len(classes):
                    continue
                mask = ((prediction == c) & regions).astype(np.uint8) * 255
                result.append({"id": f"p{int(c)}", "type": "brushlabels", "from_name": LABEL, "to_name": IMAGE,
                               "original_width": width, "original_height": height, "image_rotation": 0,
                               "value": {"format": "rle", "rle": brush.mask2rle(mask),
                                         "brushlabels": [classes[int(c)]]}})
        score = item.get("score")
        image = Path(item["image"]) if Path(item["image"]).is_absolute() else Path(manifest_path).parent / item["image"]
        tasks.append({"data": {IMAGE: image_url(image), "s4al_id": item["id"],
                               "s4al_stage": stage, "score": score},
                      "predictions": [{"model_version": f"s4al {stage}", "score": score, "result": result}]})
    return tasks


def write_export(manifest_path: Path, image_url) -> tuple[Path, Path]:
    """Write labelstudio_tasks.json and labelstudio_config.xml beside the manifest."""
    from core.io import atomic_write_text
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    tasks = export_tasks(manifest_path, image_url)
    folder = manifest_path.parent
    atomic_write_text(folder / TASKS, json.dumps(tasks) + "\n")
    atomic_write_text(folder / CONFIG, labelling_config(manifest["classes"], manifest.get("palette")))
    return folder / TASKS, folder / CONFIG


def read_export(export_path: Path, manifest_path: Path) -> dict[str, np.ndarray]:
    """{id: (H, W) uint8 class ids, 255 unpainted} of every task of a Label Studio JSON export that
    has an annotation, at the size it was drawn at. Errors name the export file and the task."""
    brush = _brush()
    export_path = Path(export_path)
    manifest = read_manifest(manifest_path)
    classes = {name: i for i, name in enumerate(manifest["classes"])}
    known = {item["id"] for item in manifest["items"]}
    try:
        tasks = json.loads(export_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{export_path}: not a readable Label Studio JSON export ({err})") from None
    if not isinstance(tasks, list):
        raise AnnotationError(f"{export_path}: a Label Studio JSON export is a list of tasks")
    out = {}
    for n, task in enumerate(tasks):
        where = f"{export_path}: task {task.get('id', n) if isinstance(task, dict) else n}"
        image_id = task.get("data", {}).get("s4al_id") if isinstance(task, dict) else None
        if image_id not in known:
            raise AnnotationError(f"{where}: data.s4al_id {image_id!r} is not an item of {manifest_path}")
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not annotations:
            continue
        newest = max(annotations, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0))
        labels = None
        for result in newest.get("result", []):
            if result.get("type") != "brushlabels":
                continue  # the query rectangles and anything else are not labels
            value = result.get("value", {})
            names = value.get("brushlabels") or []
            if len(names) != 1 or names[0] not in classes:
                raise AnnotationError(f"{where}: brush label {names} is not one of the classes {list(classes)}")
            if value.get("format") != "rle" or "rle" not in value:
                raise AnnotationError(f"{where}: brush result without RLE (format {value.get('format')!r})")
            height, width = int(result["original_height"]), int(result["original_width"])
            pixels = brush.decode_rle(value["rle"])
            if pixels.size != height * width * 4:
                raise AnnotationError(f"{where}: brush RLE holds {pixels.size // 4} pixels, the image "
                                      f"is {height}x{width}")
            mask = pixels.reshape(height, width, 4)[:, :, 3] > 127
            if labels is None:
                labels = np.full((height, width), 255, np.uint8)
            elif labels.shape != mask.shape:
                raise AnnotationError(f"{where}: brush layers of different sizes")
            labels[mask] = classes[names[0]]
        out[image_id] = labels if labels is not None else None
    return out


def import_export(export_path: Path, manifest_path: Path) -> list[str]:
    """Write the label PNG of every annotated task (all checked first); returns their ids. A task
    annotated with no brush at all (everything void) is written as all void."""
    drawn = read_export(export_path, manifest_path)
    manifest = read_manifest(manifest_path)
    sizes = {item["id"]: (int(item["height"]), int(item["width"])) for item in manifest["items"]}
    labels = {k: v if v is not None else np.full(sizes[k], 255, np.uint8) for k, v in drawn.items()}
    return store_labels(manifest_path, labels)
