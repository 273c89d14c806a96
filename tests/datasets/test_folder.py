"""Your own data set (`data.dataset: folder`): layout, list files, label_map, ignore_index,
palette, config checks, bad files; and one tiny AL run + evaluate.py on a folder data set."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets import PALETTE, build_source
from datasets.decode import read_label_png
from core.config import ConfigError, load_config
from datasets.classes import colorize
from tests.helpers import AL_STAGES, REPO, TINY, run_script
from tests.datasets.test_source import write_gray, write_rgb

CLASSES = ["ground", "wall", "plant"]
# Raw label values of the "own" data: class c is stored as 10 * (c + 1); 99 is the ignore value.
RAW = {10: 0, 20: 1, 30: 2}




def make_folder(root: Path, names=("b", "a", "c"), split="train", size=(12, 16), seed=0,
                values=(10, 20, 30, 99)):
    """`<root>/<split>/images|labels` tree; returns {stem: (rgb, raw label)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in names:
        rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        raw = rng.choice(np.array(values, np.uint8), size=size)
        write_rgb(root / split / "images" / f"{name}.png", rgb)
        write_gray(root / split / "labels" / f"{name}.png", raw)
        written[name] = (rgb, raw)
    return written


def folder(root, split="train", **kw):
    kw.setdefault("classes", CLASSES)
    return build_source("folder", root, split, **kw)


def naive_map(raw: np.ndarray, mapping: dict, ignore: int) -> np.ndarray:
    """Pixel-by-pixel reference: mapped value, 255 for the ignore value."""
    out = np.empty_like(raw)
    for idx, v in np.ndenumerate(raw):
        out[idx] = 255 if v == ignore else mapping[int(v)]
    return out


# ---------------------------------------------------------------- layout and list files
def test_folder_layout_pairs_images_with_labels_sorted_by_stem(tmp_path):
    written = make_folder(tmp_path, values=(0, 1, 2, 255))
    src = folder(tmp_path)
    assert src.ids == ["a", "b", "c"] and src.classes == tuple(CLASSES) and src.name == "folder"
    for i, name in enumerate(src.ids):
        img, lab = src.read(i)
        rgb, raw = written[name]
        np.testing.assert_array_equal(img, rgb)                    # RGB order, not BGR
        np.testing.assert_array_equal(lab, raw)                    # identity ids, 255 stays ignore
        assert Path(src.label_path(i)) == tmp_path / "train" / "labels" / f"{name}.png"


def test_list_file_given_or_found_beside_the_splits(tmp_path):
    written = make_folder(tmp_path, names=("x", "y"), values=(0, 1, 2))
    listing = tmp_path / "lists" / "mine.txt"
    listing.parent.mkdir()
    listing.write_text("train/images/y.png train/labels/y.png\n\ntrain/images/x.png train/labels/x.png\n")
    src = folder(tmp_path, str(listing))
    assert src.ids == ["y", "x"]                                   # list order; ids are stems
    np.testing.assert_array_equal(src.read(0)[0], written["y"][0])
    (tmp_path / "some.txt").write_text("train/images/x.png train/labels/x.png\n")
    assert folder(tmp_path, "some").ids == ["x"]                   # <root>/<split>.txt, as for CamVid


def test_label_map_and_ignore_index_against_a_pixel_loop(tmp_path):
    written = make_folder(tmp_path, values=(10, 20, 30, 99, 40))
    mapping = {**RAW, 40: 255}                                     # a second void value via the map
    src = folder(tmp_path, ignore_index=99, label_map=mapping)
    for i, name in enumerate(src.ids):
        np.testing.assert_array_equal(src.read(i)[1], naive_map(written[name][1], mapping, 99))


def test_custom_ignore_index_with_identity_ids_and_255_is_then_a_bad_value(tmp_path):
    written = make_folder(tmp_path, values=(0, 1, 2, 200))
    src = folder(tmp_path, ignore_index=200)
    np.testing.assert_array_equal(src.read(0)[1], naive_map(written["a"][1], {0: 0, 1: 1, 2: 2}, 200))
    lab = written["b"][1].copy()
    lab[0, 0] = 255                                                # not the ignore value here
    write_gray(tmp_path / "train" / "labels" / "b.png", lab)
    with pytest.raises(ValueError, match=r"\[255\].*labels[/\\]b\.png"):
        src.read(1)


def test_palette_given_default_and_used_by_colorize(tmp_path):
    make_folder(tmp_path, values=(0, 1, 2))
    palette = [[1, 2, 3], [40, 50, 60], [250, 0, 7]]
    src = folder(tmp_path, palette=palette)
    assert src.palette.dtype == np.uint8 and src.palette.tolist() == palette
    np.testing.assert_array_equal(folder(tmp_path).palette, PALETTE[:3])
    label = np.array([[0, 2], [255, 1]], np.uint8)
    expected = np.array([[[1, 2, 3], [250, 0, 7]], [[0, 0, 0], [40, 50, 60]]], np.uint8)
    np.testing.assert_array_equal(colorize(label, src.palette), expected)
    np.testing.assert_array_equal(colorize(label), PALETTE[[[0, 2], [0, 1]]] * (label != 255)[..., None])
    with pytest.raises(ValueError, match="palette must be 3"):
        folder(tmp_path, palette=palette[:2])


# ---------------------------------------------------------------- bad input
def test_value_outside_the_map_names_the_file_and_value(tmp_path):
    written = make_folder(tmp_path, values=(10, 20, 30, 99))
    lab = written["c"][1].copy()
    lab[2, 3] = 21
    write_gray(tmp_path / "train" / "labels" / "c.png", lab)
    src = folder(tmp_path, ignore_index=99, label_map=RAW)
    src.read(0)
    with pytest.raises(ValueError, match=r"\[21\] out of range.*labels[/\\]c\.png"):
        src.read(2)


def test_size_mismatch_and_missing_label_name_the_files(tmp_path):
    make_folder(tmp_path, values=(0, 1))
    write_gray(tmp_path / "train" / "labels" / "b.png", np.zeros((13, 16), np.uint8))
    with pytest.raises(ValueError, match=r"size mismatch: .*images[/\\]b\.png is 12x16, .*b\.png is 13x16"):
        folder(tmp_path).read(1)
    (tmp_path / "train" / "labels" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no label for image .*c\.png: expected .*labels[/\\]c\.png"):
        folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"val[/\\]images"):
        folder(tmp_path, "val")


@pytest.mark.parametrize("kwargs, message", [
    ({"classes": None}, "needs data.classes"),
    ({"classes": ["a", "b", "a"]}, r"duplicate class names \['a'\]"),
    ({"classes": ["only"]}, "need 2..255"),
    ({"ignore_index": 1}, "ignore_index 1 is also a class value"),
    ({"label_map": {10: 0, 20: 3}}, "20 -> 3: class id must be in 0..2"),
    ({"label_map": {300: 0}}, "300 is outside 0..255"),
    ({"label_map": {10: 0}, "ignore_index": 10}, "ignore_index 10 is also a class value"),
])
def test_bad_class_settings_are_refused(tmp_path, kwargs, message):
    make_folder(tmp_path, values=(0, 1))
    with pytest.raises(ValueError, match=message):
        folder(tmp_path, **kwargs)


def test_fixed_datasets_refuse_folder_settings(tmp_path):
    with pytest.raises(ValueError, match="data.classes is only for data.dataset=folder"):
        build_source("camvid", tmp_path, "train", classes=CLASSES)
    with pytest.raises(ValueError, match="data.ignore_index is only for data.dataset=folder"):
        build_source("cityscapes", tmp_path, "train", ignore_index=0)


@pytest.mark.parametrize("overrides, message", [
    (["data.classes=[a,b]"], "data.classes (from command line): only for data.dataset=folder"),
    (["data.palette=[[1,2,3]]"], "data.palette (from command line): only for data.dataset=folder"),
    (["data.dataset=folder"], "data.classes (from"),
    (["data.dataset=folder", "data.classes=[a,b]", "data.palette=[[1,2,3]]"],
     "data.palette (from command line): palette must be 2"),
    (["data.dataset=folder", "data.classes=[a,b]", "data.palette=[[1,2,3],[0,0,256]]"],
     "data.palette (from command line): colour values must be in 0..255"),
    (["data.dataset=folder", "data.classes=[a,b]", "data.label_map=[1,2]"],
     "data.label_map (from command line): expected a mapping of int -> int"),
    (["data.dataset=folder", "data.classes=[a,b]", "data.label_map={7: 2}"],
     "data.label_map (from command line): 7 -> 2: class id must be in 0..1"),
    (["data.dataset=folder", "data.classes=[a,b]", "data.ignore_index=0"],
     "data.ignore_index (from command line): data.ignore_index 0 is also a class value"),
])
def test_config_checks_name_the_key_and_where_it_came_from(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides)
    assert message in str(err.value)


def test_config_accepts_a_folder_dataset_and_types_the_map():
    cfg = load_config("examples/folder_al", ["data.label_map={10: 0, 20: 1}", "data.classes=[a,b]",
                                             "data.palette=null"])
    assert cfg.data.label_map == {10: 0, 20: 1} and cfg.data.classes == ["a", "b"]


# ---------------------------------------------------------------- end to end
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
