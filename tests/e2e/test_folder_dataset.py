"""One tiny AL run on your own data set (`data.dataset: folder`: the synthetic set re-encoded, label_map
and ignore_index undoing it) equals the same data in CamVid layout; evaluate.py on it writes the
palette's colours; a bad label fails before the run. (The folder data set itself:
tests/datasets/test_folder.py.)"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.decode import read_label_png
from tests.helpers import AL_STAGES, REPO, TINY, run_script

PALETTE_E2E = np.array([[c * 20, 255 - c * 20, 100] for c in range(11)], np.uint8)


def write_folder_copy(synthetic: Path, root: Path) -> tuple[dict, Path]:
    """The synthetic set rewritten as an 'own' data set: train in the folder layout, val as a
    list file, label values re-encoded (class c -> 20 + 10c, void 11 -> 7). Returns the
    label_map that undoes the encoding and the val list file."""
    encode = np.full(256, 0, np.uint8)
    encode[:11] = 20 + 10 * np.arange(11)
    encode[11] = 7
    for split, image_dir, label_dir in (("train", "train/images", "train/labels"),
                                        ("val", "valset/img", "valset/lab")):
        lines = []
        for image in sorted((synthetic / split).glob("*.png")):
            (root / image_dir).mkdir(parents=True, exist_ok=True)
            (root / label_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / image_dir / image.name)
            raw = cv2.imread(str(synthetic / f"{split}annot" / image.name), cv2.IMREAD_UNCHANGED)
            assert cv2.imwrite(str(root / label_dir / image.name), encode[raw])
            lines.append(f"{image_dir}/{image.name} {label_dir}/{image.name}")
    listing = root / "val_list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return {20 + 10 * c: c for c in range(11)}, listing


def folder_config(path: Path, root: Path, out: Path, label_map: dict, eval_list: Path) -> Path:
    from datasets import CAMVID_CLASSES
    text = TINY.format(data_root=root, output_dir=out).replace(
        "dataset: synthetic",
        f"dataset: folder\n  classes: {json.dumps(list(CAMVID_CLASSES))}\n  ignore_index: 7\n"
        f"  label_map: {{{', '.join(f'{raw}: {c}' for raw, c in label_map.items())}}}\n"
        f"  palette: {json.dumps(PALETTE_E2E.tolist())}").replace(
        "eval_split: val", f"eval_split: {eval_list}")
    path.write_text(text + AL_STAGES)
    return path


@pytest.fixture(scope="module")
def folder_run(al_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    label_map, listing = write_folder_copy(al_run["data"], base / "own")
    cfg = folder_config(base / "own_al.yaml", base / "own", base / "run", label_map, listing)
    result = run_script("train_al.py", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"config": cfg, "run": base / "run", "root": base / "own", "base": base}


def test_folder_run_equals_the_same_data_in_camvid_layout(al_run, folder_run):
    """Same images, same labels once label_map / ignore_index undo the re-encoding, same seed:
    every stage's mIoU equals the synthetic run's (a wrong map or ignore value would change them)."""
    ours = json.loads((folder_run["run"] / "summary.json").read_text())
    ref = json.loads((al_run["run"] / "summary.json").read_text())
    assert ours["finished"] and [s["name"] for s in ours["stages"]] == ["teacher", "student", "query1"]
    assert [s["miou"] for s in ours["stages"]] == [s["miou"] for s in ref["stages"]]
    assert [s["labeled_pixel_pct"] for s in ours["stages"]] == [s["labeled_pixel_pct"] for s in ref["stages"]]
    assert list((folder_run["run"] / "02_query1" / "query_vis").glob("*.png"))


def test_evaluate_on_a_folder_run_writes_palette_colours(folder_run, tmp_path):
    preds = tmp_path / "preds"
    result = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--config", str(folder_run["config"]),
                             "--save-predictions", str(preds)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((folder_run["run"] / "summary.json").read_text())
    evaluated = json.loads((folder_run["run"] / "02_query1" / "eval_val_list.json").read_text())
    assert evaluated["miou"] == summary["stages"][-1]["miou"]
    palette = PALETTE_E2E
    for ids_png in sorted(p for p in preds.glob("*.png") if not p.stem.endswith("_color")):
        ids = read_label_png(ids_png)  # palette PNG: indices are the ids
        colour = cv2.cvtColor(cv2.imread(str(ids_png.with_name(ids_png.stem + "_color.png"))), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(colour, palette[ids])


def test_bad_label_in_a_folder_data_set_fails_before_the_run(folder_run, tmp_path):
    root = tmp_path / "own"
    shutil.copytree(folder_run["root"], root)
    bad = sorted((root / "train" / "labels").glob("*.png"))[3]
    lab = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 25                                                 # not in label_map, not ignore
    assert cv2.imwrite(str(bad), lab)
    text = folder_run["config"].read_text().replace(str(folder_run["root"]), str(root)).replace(
        str(folder_run["run"]), str(tmp_path / "run"))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    result = run_script("train_al.py", cfg)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "[25] out of range" in errors[0] and bad.name in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
