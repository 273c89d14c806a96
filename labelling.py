"""Hand a human query's annotation task to Label Studio or CVAT, and bring the labels back.

A query stage with query.oracle=human writes runs/<run>/NN_<stage>/annotate/manifest.json and
stops. Then:

  python labelling.py export runs/my/01_query1/annotate --document-root .
      writes labelstudio_tasks.json (one task per image: the queried regions as rectangles, the
      model's prediction inside them as a brush pre-annotation, `score` to sort by) and
      labelstudio_config.xml (the labelling interface of the data set's classes) beside the
      manifest, and cvat_labels.json (the classes as CVAT labels, to paste into a CVAT project)
  python labelling.py import-labelstudio runs/my/01_query1/annotate export.json
      a Label Studio JSON export (brush RLE) -> annotate/labels/<id>.png
  python labelling.py import-cvat runs/my/01_query1/annotate cvat_export.zip
      a CVAT "Segmentation mask 1.1" export (zip or folder) -> annotate/labels/<id>.png
  python labelling.py import-masks runs/my/01_query1/annotate my_masks/
      a folder of <image name>.png class-id masks (grey, palette or 1-bit) -> annotate/labels/

Labels drawn at another size than the run's working size are resized (nearest). Then run the
training command again (add --import-partial to go on with the images labelled so far).
Bad input: one `error:` line naming the file, exit code 2, no label file written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

from al.annotate import MANIFEST, AnnotationError, read_manifest


def _manifest(path: str) -> Path:
    path = Path(path)
    manifest = path / MANIFEST if path.is_dir() else path
    if not manifest.is_file():
        raise AnnotationError(f"{manifest}: no annotation manifest here (a query stage with "
                              f"query.oracle=human writes NN_<stage>/annotate/{MANIFEST})")
    return manifest


def local_files_url(document_root: Path):
    """Image URLs for Label Studio's local-files route: start it with
    LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<root>."""
    root = Path(document_root).resolve()

    def url(path: Path) -> str:
        try:
            relative = Path(path).resolve().relative_to(root)
        except ValueError:
            raise AnnotationError(f"{path}: image is outside --document-root {root}") from None
        return "/data/local-files/?d=" + quote(relative.as_posix())
    return url


def cvat_labels(classes: list[str], palette: list | None) -> list[dict]:
    colours = palette or [[255, 0, 0]] * len(classes)
    return [{"name": c, "color": "#%02x%02x%02x" % tuple(rgb), "type": "any", "attributes": []}
            for c, rgb in zip(classes, colours)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="Label Studio task file + labelling config, CVAT labels")
    export.add_argument("annotate", help="the annotate/ folder (or its manifest.json)")
    export.add_argument("--document-root", default=".",
                        help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: current folder)")
    for name, what in (("import-labelstudio", "a Label Studio JSON export"),
                       ("import-cvat", "a CVAT 'Segmentation mask 1.1' export (.zip or folder)"),
                       ("import-masks", "a folder of <image name>.png class-id masks")):
        p = sub.add_parser(name, help=f"write label PNGs from {what}")
        p.add_argument("annotate", help="the annotate/ folder (or its manifest.json)")
        p.add_argument("source", help=what)
    args = parser.parse_args(argv)
    try:
        manifest = _manifest(args.annotate)
        if args.command == "export":
            from al import labelstudio
            from core.io import atomic_write_text
            tasks, config = labelstudio.write_export(manifest, local_files_url(Path(args.document_root)))
            meta = read_manifest(manifest)
            labels = manifest.parent / "cvat_labels.json"
            atomic_write_text(labels, json.dumps(cvat_labels(meta["classes"], meta.get("palette")), indent=1) + "\n")
            print(f"wrote {tasks}, {config} and {labels}")
            return 0
        if args.command == "import-labelstudio":
            from al.labelstudio import import_export
            written = import_export(Path(args.source), manifest)
        elif args.command == "import-cvat":
            from al.cvat import import_cvat
            written = import_cvat(Path(args.source), manifest)
        else:
            from al.cvat import import_masks
            written = import_masks(Path(args.source), manifest)
    except (AnnotationError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    total = len(read_manifest(manifest)["items"])
    print(f"wrote {len(written)} of {total} label files into {manifest.parent / 'labels'}"
          + ("" if len(written) == total else " (run the training command with --import-partial to go on "
             "with these, or label the rest first)"))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
