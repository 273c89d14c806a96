"""evaluate.py on the shared tiny AL run: the run's own numbers, eval_<split>.json placement,
prediction PNGs against an argmax computed here, unlabeled image folders, and bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets.decode import read_label_png
from tests.helpers import REPO, run_summary, script_env

MEAN = np.array([0.485, 0.456, 0.406]) * 255   # ImageNet statistics, written out independently
STD = np.array([0.229, 0.224, 0.225]) * 255


def run_evaluate(config: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--config", str(config), *args],
                          cwd=cwd, env=script_env("2"), capture_output=True, text=True, timeout=300)


def stage_model(weights: Path):
    """The tiny config's model (MobileNetV2 OS16, rep_dim 8, 11 classes) with a stage's weights."""
    from models import build_model
    state = torch.load(weights, weights_only=True)["model"]
    model = build_model("mobilenet_v2", 11, 16, rep_dim=8, rep_head=any(k.startswith("representation_head.")
                                                                       for k in state))
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def argmax_of(model, rgb: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(((rgb - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)[None]
    return model(x.contiguous(memory_format=torch.channels_last))[0].argmax(0).numpy().astype(np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_last_stage_equals_the_run_summary_and_json_goes_to_the_stage(al_run, tmp_path):
    result = run_evaluate(al_run["config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    last = run_summary(al_run["run"])["stages"][-1]
    written = json.loads((al_run["run"] / "02_query1" / "eval_val.json").read_text())
    assert written["stage"] == "query1" and written["split"] == "val"
    assert written["miou"] == last["miou"] and written["per_class_iou"] == last["per_class_iou"]
    assert f"{last['miou']:.2f}" in result.stdout.splitlines()[-2] and "sky" in result.stdout
    assert f"pixel accuracy {written['pixel_acc']:.2f}   mAcc {written['macc']:.2f}" in result.stdout.splitlines()[-2]
    assert not list(tmp_path.iterdir())                          # nothing beside the caller


def test_stage_predictions_equal_an_argmax_computed_here(al_run, tmp_path):
    from datasets import PALETTE
    preds = tmp_path / "preds"
    result = run_evaluate(al_run["config"], "--stage", "teacher", "--save-predictions", str(preds), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    teacher = run_summary(al_run["run"])["stages"][0]
    assert json.loads((al_run["run"] / "00_teacher" / "eval_val.json").read_text())["miou"] == teacher["miou"]
    model = stage_model(al_run["run"] / "00_teacher" / "weights.pth")
    images = sorted((al_run["data"] / "val").glob("*.png"))
    assert sorted(p.name for p in preds.iterdir()) == sorted(
        [p.name for p in images] + [f"{p.stem}_color.png" for p in images])
    for image in images:
        expected = argmax_of(model, read_rgb(image))
        ids = read_label_png(preds / image.name)  # a palette PNG whose indices are the class ids
        np.testing.assert_array_equal(ids, expected)
        np.testing.assert_array_equal(read_rgb(preds / f"{image.stem}_color.png"), PALETTE[expected])


def test_plain_state_dict_outside_a_run_writes_into_the_current_folder(al_run, tmp_path):
    state = torch.load(al_run["run"] / "02_query1" / "weights.pth", weights_only=True)["model"]
    (tmp_path / "downloads").mkdir()
    torch.save(state, tmp_path / "downloads" / "plain.pth")
    result = run_evaluate(al_run["config"], "--weights", str(tmp_path / "downloads" / "plain.pth"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "eval_val.json"]
    written = json.loads((tmp_path / "eval_val.json").read_text())
    assert written["miou"] == run_summary(al_run["run"])["stages"][-1]["miou"] and written["stage"] is None


def test_images_folder_without_labels_is_predicted_at_the_working_size(al_run, tmp_path):
    val = sorted((al_run["data"] / "val").glob("*.png"))
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(val[0], photos / "plain.png")
    big = cv2.resize(cv2.imread(str(val[1])), (128, 96), interpolation=cv2.INTER_LINEAR)
    assert cv2.imwrite(str(photos / "big.jpg"), big)
    preds = tmp_path / "preds"
    result = run_evaluate(al_run["config"], "--images", str(photos), "--save-predictions", str(preds),
                          "data.resize=[48,64]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    model = stage_model(al_run["run"] / "02_query1" / "weights.pth")
    shrunk = cv2.resize(read_rgb(photos / "big.jpg"), (64, 48), interpolation=cv2.INTER_AREA)
    for stem, rgb in (("plain", read_rgb(val[0])), ("big", shrunk)):
        ids = read_label_png(preds / f"{stem}.png")
        assert ids.shape == (48, 64)
        np.testing.assert_array_equal(ids, argmax_of(model, rgb))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "preds"]   # no metrics without labels


@pytest.fixture(scope="module")
def wrong_files(al_run, tmp_path_factory) -> dict:
    from models import build_model
    folder, run = tmp_path_factory.mktemp("wrong"), al_run["run"]
    state = torch.load(run / "02_query1" / "weights.pth", weights_only=True)
    torch.save(state, folder / "wrapped.pth")                     # a run file without its checksum
    torch.save(build_model("mobilenet_v2", 5, 16, rep_dim=8).state_dict(), folder / "five_classes.pth")
    (folder / "garbage.pth").write_text("not weights\n")
    damaged = folder / "damaged" / "weights.pth"
    damaged.parent.mkdir()
    shutil.copy(run / "02_query1" / "weights.pth.sha256", f"{damaged}.sha256")
    damaged.write_bytes((run / "02_query1" / "weights.pth").read_bytes()[:1000])
    unfinished = folder / "unfinished"
    shutil.copytree(run, unfinished, ignore=shutil.ignore_patterns("tensorboard", "pseudo", "eval_*.json"))
    (unfinished / "02_query1" / "metrics.json").unlink()
    (folder / "photos").mkdir()
    shutil.copy(sorted((al_run["data"] / "val").glob("*.png"))[0], folder / "photos" / "fine.png")
    (folder / "photos" / "broken.png").write_bytes(b"not a png" * 20)
    return {"WRAPPED": folder / "wrapped.pth", "FIVE": folder / "five_classes.pth",
            "GARBAGE": folder / "garbage.pth", "DAMAGED": damaged, "UNFINISHED": unfinished,
            "PHOTOS": folder / "photos", "PREDS": folder / "preds"}


BAD = [  # (name, arguments, fragment of the one error line)
    ("unknown stage", ["--stage", "nope"],
     "--stage 'nope': the stages of tiny_al are ['teacher', 'student', 'query1']"),
    ("unfinished stage", ["--stage", "02_query1", "output_dir=UNFINISHED"], "--stage query1: stage not finished"),
    ("no run", ["output_dir=/nonexistent/run"], "no run of config 'tiny_al' at /nonexistent/run"),
    ("missing weights", ["--weights", "/nonexistent/w.pth"], "--weights: file not found: /nonexistent/w.pth"),
    ("not a torch file", ["--weights", "GARBAGE"], "garbage.pth: not a plain PyTorch state dict"),
    ("run file without checksum", ["--weights", "WRAPPED"], "needs its .sha256 file beside it"),
    ("damaged run file", ["--weights", "DAMAGED"], "checksum mismatch"),
    ("other class count", ["--weights", "FIVE"], "does not fit the model of tiny_al"),
    ("images without output", ["--images", "/tmp"], "--images needs --save-predictions"),
    ("broken image", ["--images", "PHOTOS", "--save-predictions", "PREDS"], "cannot decode image file"),
]


@pytest.mark.parametrize("name, args, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_stage_or_weights_give_one_error_line(al_run, wrong_files, tmp_path, name, args, fragment):
    for key, path in wrong_files.items():
        args = [a.replace(key, str(path)) for a in args]
    result = run_evaluate(al_run["config"], *args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout[-1000:], result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())
    assert not wrong_files["PREDS"].exists()
