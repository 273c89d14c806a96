"""Issue 21: every bad input and damaged file is one `error:` line naming the file or key, exit code
2, and nothing created, changed or deleted; labels read as written; nothing read from outside;
one process per run directory.

The table (CASES) runs the real scripts. Each case prepares its inputs in a fresh folder (a copy
of the tiny data set, a copy of a finished run where it needs one), takes a snapshot of every
file's bytes, runs one command and checks: exit code 2, stderr is exactly one line, it starts
with `error:` and names what it must name, no traceback, and the snapshot is unchanged.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import REPO, run_script, write_config

pytestmark = pytest.mark.slow

HUMAN_STAGES = """
stages:
  teacher: {kind: supervised, batch_labeled: 2, epochs: 1}
  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, init: teacher, epochs: 1, iters_per_epoch: 1}
"""
TEACHER_ONLY = """
stages:
  teacher: {kind: supervised, batch_labeled: 2}
"""


# --------------------------------------------------------------------------- helpers
def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root`: a file's SHA-1, a symlink's target, or 'dir'."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        key = os.fsencode(path.relative_to(root)).decode("utf-8", "backslashreplace")
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    for hook in ("S4AL_DIE_AT", "S4AL_PERTURB_RANK", "S4AL_DISK_FULL"):
        full_env.pop(hook, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=600)


def png_bytes(array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> bytes:
    image = Image.fromarray(array, mode) if mode is None or mode != "1" else Image.fromarray(array.astype(bool))
    if palette is not None:
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def first(folder: Path, pattern: str = "*.png") -> Path:
    return sorted(Path(folder).glob(pattern))[0]


@dataclass
class Case:
    name: str
    prepare: Callable  # (Setting) -> None: damages inputs, sets script/args/fragment
    needs_run: bool = False
    needs_human: bool = False


@dataclass
class Setting:
    tmp: Path
    data: Path
    run: Path
    config: Path
    script: str = "train_al.py"
    args: list = field(default_factory=list)
    fragment: str = ""
    env: dict = field(default_factory=dict)
    may_change: tuple = ()  # run files a started run rewrites (its own log), for mid-run cases


CASES: list[Case] = []


def case(name, *, run=False, human=False):
    def register(fn):
        CASES.append(Case(name, fn, needs_run=run, needs_human=human))
        return fn
    return register


def cfg_args(s: Setting, *overrides: str) -> list[str]:
    return ["--config", str(s.config), *overrides]


# --------------------------------------------------------------------------- config values
for _name, _override, _fragment in [
    ("unknown key", "model.widht=3", "unknown key model.widht"),
    ("wrong type", "optim.lr=fast", "optim.lr"),
    ("empty stages", "stages={}", "stages"),
    ("seed above 2^63", f"seed={2**64}", "seed"),
    ("negative seed", "seed=-1", "seed"),
    ("sliding window 0", "eval.window=[0,0]", "eval.window"),
    ("sliding stride 0", "eval.stride=[0,8]", "eval.stride"),
    ("1x1 crop", "data.crop_size=[1,1]", "data.crop_size"),
    ("probability above 1", "aug.blur_p=1.5", "aug.blur_p"),
    ("negative probability", "aug.cutout_p=-0.1", "aug.cutout_p"),
    ("threshold above 1", "loss.strong_threshold=2", "loss.strong_threshold"),
    ("temperature 0", "loss.temperature=0", "loss.temperature"),
    ("negative lr", "optim.lr=-0.01", "optim.lr"),
    ("momentum 1", "optim.momentum=1.0", "optim.momentum"),
    ("dropout above 1", "model.dropout=1.5", "model.dropout"),
    ("initial fraction 1 with self-training", "query.initial_fraction=1.0", "query.initial_fraction"),
]:
    def _prepare(s, override=_override, fragment=_fragment):
        s.args, s.fragment = cfg_args(s, override), fragment
    case(_name)(_prepare)


@case("duplicate YAML key")
def _(s):
    s.config.write_text(s.config.read_text() + "seed: 4\n")  # `seed: 3` is at the top
    s.args, s.fragment = cfg_args(s), "duplicate key 'seed'"


@case("config not UTF-8")
def _(s):
    s.config.write_bytes(s.config.read_bytes() + b"# caf\xe9\n")
    s.args, s.fragment = cfg_args(s), "not UTF-8"


@case("config not YAML")
def _(s):
    s.config.write_text(s.config.read_text() + "data: [unclosed\n")
    s.args, s.fragment = cfg_args(s), "not valid YAML"


# --------------------------------------------------------------------------- data
@case("RGB label")
def _(s):
    label = first(s.data / "trainannot")
    label.write_bytes(png_bytes(np.zeros((48, 64, 3), np.uint8)))
    s.args, s.fragment = cfg_args(s), f"convert it to one index per pixel first, e.g. map each colour to its class id"
    s.fragment_file = label


@case("truncated PNG image")
def _(s):
    image = first(s.data / "train")
    image.write_bytes(image.read_bytes()[:300])
    s.args, s.fragment = cfg_args(s), "cannot decode image file"
    s.fragment_file = image


@case("truncated JPEG image")
def _(s):
    image = first(s.data / "train")
    rgb = np.asarray(Image.open(image).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    # JPEG bytes under the listed name (decoders go by content): cv2 would decode grey rows here.
    image.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    s.args, s.fragment = cfg_args(s), "cannot decode image file"
    s.fragment_file = image


@case("corrupt label")
def _(s):
    label = first(s.data / "trainannot")
    label.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    s.args, s.fragment = cfg_args(s), "cannot decode label file"
    s.fragment_file = label


@case("label that is a 16-bit PNG")
def _(s):
    label = first(s.data / "trainannot")
    cv2.imwrite(str(label), np.zeros((48, 64), np.uint16))
    s.args, s.fragment = cfg_args(s), "got mode 'I"
    s.fragment_file = label


@case("non-UTF-8 file name in the data set")
def _(s):
    image = first(s.data / "train")
    label = s.data / "trainannot" / image.name
    bad = os.fsdecode(b"caf\xe9")  # a Latin-1 name: not UTF-8 (cv2.imread segfaults on it)
    shutil.copy(image, s.data / "train" / f"{bad}.png")
    shutil.copy(label, s.data / "trainannot" / f"{bad}.png")
    (s.data / "train.txt").unlink()  # the split is then the folder's files
    s.args, s.fragment = cfg_args(s), "file name is not valid UTF-8"


@case("relative list file that is not there")
def _(s):
    s.args, s.fragment = cfg_args(s, "data.eval_split=lists/nope.txt"), "relative to the current folder"


@case("list file not UTF-8")
def _(s):
    listing = s.tmp / "eval.txt"
    listing.write_bytes(b"val/caf\xe9.png valannot/caf\xe9.png\n")
    s.args, s.fragment = cfg_args(s, f"data.eval_split={listing}"), "split list file is not UTF-8"


@case("crafted model.pretrained file")
def _(s):
    crafted = s.tmp / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1), "x": Path("/")}, crafted)  # a pickled Python object
    s.args = cfg_args(s, f"model.pretrained={crafted}", "stage_defaults.init=pretrained")
    s.fragment = "refused weights file"
    s.fragment_file = crafted


# --------------------------------------------------------------------------- --overwrite
@case("--overwrite on a folder that is not a run")
def _(s):
    (s.run).mkdir()
    (s.run / "thesis.tex").write_text("months of work\n")
    (s.run / "config.yaml").write_text("seed: 1\n")
    s.args, s.fragment = cfg_args(s, "--overwrite"), "is not a run directory (it holds 'thesis.tex'"


@case("--overwrite with output_dir = data.root")
def _(s):
    s.args, s.fragment = cfg_args(s, "--overwrite", f"output_dir={s.data}"), "data.root"


@case("--overwrite on a folder that contains data.root")
def _(s):
    s.args, s.fragment = cfg_args(s, "--overwrite", f"output_dir={s.tmp}"), "contains data.root"


@case("--overwrite on a file")
def _(s):
    (s.tmp / "a_file").write_text("x\n")
    s.args, s.fragment = cfg_args(s, "--overwrite", f"output_dir={s.tmp / 'a_file'}"), "is a file"


@case("another config on a run: the message says what --overwrite deletes", run=True)
def _(s):
    s.args, s.fragment = cfg_args(s, "optim.lr=0.5"), f"--overwrite deletes the run directory {s.run} ("


# --------------------------------------------------------------------------- run records
def _damage(relative: str, how: str):
    def prepare(s):
        path = s.run / relative
        if how == "delete":
            path.unlink()
        elif how == "truncate":
            path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
        else:
            path.write_bytes(b"\x00garbage{")
        s.args, s.fragment = cfg_args(s), f"{path}: run record"
    return prepare


for _rel, _how in [("00_teacher/metrics.json", "garbage"), ("00_teacher/weights.pth", "delete"),
                   ("01_student/weights.pth", "truncate"), ("00_teacher/pool.npz", "garbage"),
                   ("02_query1/pool.npz", "delete"), ("02_query1/metrics.json", "truncate"),
                   ("config.yaml", "garbage")]:
    case(f"{_rel} {_how}", run=True)(_damage(_rel, _how))


@case("run directory locked by another process", run=True)
def _(s):
    s.hold_lock = True
    s.args, s.fragment = cfg_args(s), f"is in use by process {os.getpid()}"


@case("symlink in the run directory to a file outside", run=True)
def _(s):
    pseudo = first(s.run / "01_student" / "pseudo")
    outside = s.tmp / "outside.png"
    shutil.copy(pseudo, outside)
    pseudo.unlink()
    pseudo.symlink_to(outside)
    s.args, s.fragment = cfg_args(s), "outside the run directory"


@case("world size differs from the stage's checkpoint", run=True)
def _(s):
    # query1 unfinished, with a checkpoint that two processes wrote (its rng list has two entries).
    from core.checkpoint import save_step
    stage = s.run / "02_query1"
    (stage / "metrics.json").unlink()
    state = torch.load(stage / "weights.pth", weights_only=True)
    save_step(stage / "checkpoints", 2, {"model": state["model"], "rng": [0, 0]})
    s.args, s.fragment = cfg_args(s), "was started with 2 processes, this run has 1"
    # It runs up to the stage's resume (its own log, the query's panels and pool), then stops.
    s.may_change = ("run/log.txt", "run/tensorboard", "run/summary.json", "run/02_query1/query_vis",
                    "run/02_query1/pool.npz")


# --------------------------------------------------------------------------- annotation import
def _annotation(edit):
    def prepare(s):
        manifest_path = s.run / "01_query1" / "annotate" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        for item in manifest["items"]:
            label = manifest_path.parent / item["label"]
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_bytes(png_bytes(np.zeros((48, 64), np.uint8)))
        s.fragment = edit(s, manifest_path, manifest)
        s.args = cfg_args(s, "query.oracle=human")
        s.may_change = ("run/log.txt", "run/tensorboard", "run/summary.json")  # the run's record of the attempt
    return prepare


def _label_path(value):
    def edit(s, manifest_path, manifest):
        manifest["items"][0]["label"] = value(s)
        manifest_path.write_text(json.dumps(manifest))
        return "may not use '..'"
    return edit


case("annotation label path with ..", human=True)(_annotation(_label_path(lambda s: "../../../../etc/passwd")))
case("annotation label path absolute", human=True)(_annotation(_label_path(lambda s: "/etc/passwd")))


@case("annotation label that is a symlink outside", human=True)
def _(s):
    def edit(s, manifest_path, manifest):
        label = manifest_path.parent / manifest["items"][0]["label"]
        outside = s.tmp / "elsewhere.png"
        outside.write_bytes(label.read_bytes())
        label.unlink()
        label.symlink_to(outside)
        return "outside the"  # the run directory's check (a run reads only its own files) comes first
    _annotation(edit)(s)


@case("annotation label in RGB", human=True)
def _(s):
    def edit(s, manifest_path, manifest):
        label = manifest_path.parent / manifest["items"][0]["label"]
        label.write_bytes(png_bytes(np.zeros((48, 64, 3), np.uint8)))
        return "convert it to one index per pixel"
    _annotation(edit)(s)


@case("annotation label truncated", human=True)
def _(s):
    def edit(s, manifest_path, manifest):
        label = manifest_path.parent / manifest["items"][0]["label"]
        label.write_bytes(label.read_bytes()[:60])
        return str(label)
    _annotation(edit)(s)


# --------------------------------------------------------------------------- evaluate.py, experiments/
@case("evaluate --save-predictions names a file", run=True)
def _(s):
    (s.tmp / "preds").write_text("not a folder\n")
    s.script, s.args = "evaluate.py", cfg_args(s, "--save-predictions", str(s.tmp / "preds"))
    s.fragment = f"{s.tmp / 'preds'} is a file, not a folder"


@case("evaluate --images with a non-UTF-8 name", run=True)
def _(s):
    photos = s.tmp / "photos"
    photos.mkdir()
    shutil.copy(first(s.data / "val"), photos / (os.fsdecode(b"\xff\xfe") + ".png"))
    s.script = "evaluate.py"
    s.args = cfg_args(s, "--images", str(photos), "--save-predictions", str(s.tmp / "out"))
    s.fragment = "file name is not valid UTF-8"


@case("evaluate --images with a truncated JPEG", run=True)
def _(s):
    photos = s.tmp / "photos"
    photos.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(buf, "JPEG")
    (photos / "cut.jpg").write_bytes(buf.getvalue()[:-200])
    s.script = "evaluate.py"
    s.args = cfg_args(s, "--images", str(photos), "--save-predictions", str(s.tmp / "out"))
    s.fragment = f"{photos / 'cut.jpg'}"


@case("evaluate --weights crafted file")
def _(s):
    crafted = s.tmp / "w.pth"
    torch.save({"a": Path("/")}, crafted)
    s.script, s.args = "evaluate.py", cfg_args(s, "--weights", str(crafted))
    s.fragment = f"{crafted}: not a plain PyTorch state dict"


@case("reproduce.py --nproc 0")
def _(s):
    s.script, s.args, s.fragment = "experiments/reproduce.py", ["table1_camvid", "--nproc", "0", "--dry-run"], "--nproc"


@case("reproduce.py --only a config not in the table")
def _(s):
    s.script, s.args = "experiments/reproduce.py", ["table1_camvid", "--only", "nope", "--dry-run"]
    s.fragment = "--only: nope"


@case("summarize.py on a missing folder")
def _(s):
    s.script = "experiments/summarize.py"
    s.args = [str(s.tmp / "no_runs"), "--out", str(s.tmp / "r.md"), "--no-plot"]
    s.fragment = "runs directory not found"


# --------------------------------------------------------------------------- the table's runner
@pytest.fixture(scope="module")
def human_run(al_run, tmp_path_factory):
    """A run whose query stage waits for a person's labels (the task is written)."""
    base = tmp_path_factory.mktemp("human")
    cfg = write_config(base, "human", base / "run", al_run["data"], stages=HUMAN_STAGES)
    result = run_script("train_al.py", cfg, "query.oracle=human")
    assert result.returncode in (0, 3), result.stderr[-3000:]
    assert (base / "run" / "01_query1" / "annotate" / "manifest.json").is_file()
    return {"config": cfg, "run": base / "run"}


def _setting(tmp_path: Path, al_run, human_run, c: Case) -> Setting:
    data = tmp_path / "data"
    shutil.copytree(al_run["data"], data)
    run = tmp_path / "run"
    if c.needs_human:
        shutil.copytree(human_run["run"], run, symlinks=True)
        config = tmp_path / "human.yaml"  # the config name is part of the run's config
        config.write_text(human_run["config"].read_text().replace(str(al_run["data"]), str(data))
                          .replace(str(human_run["run"]), str(run)))
        # The copied run's config.yaml names the old places: the copy is this run.
        saved = run / "config.yaml"
        saved.write_text(saved.read_text().replace(str(al_run["data"]), str(data))
                         .replace(str(human_run["run"]), str(run)))
    else:
        if c.needs_run:
            shutil.copytree(al_run["run"], run, symlinks=True)
            saved = run / "config.yaml"
            saved.write_text(saved.read_text().replace(str(al_run["data"]), str(data))
                             .replace(str(al_run["run"]), str(run)))
        config = write_config(tmp_path, "tiny_al", run, data)  # al_run's name: its copy is this run
    return Setting(tmp=tmp_path, data=data, run=run, config=config)


def _changed(before: dict, after: dict, may_change: tuple) -> list[str]:
    def allowed(key):
        return any(key == m or key.startswith(m + "/") for m in may_change)
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k) and not allowed(k))


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_changed(c, al_run, human_run, tmp_path):
    s = _setting(tmp_path, al_run, human_run, c)
    c.prepare(s)
    before = snapshot(tmp_path)
    lock_fd = None
    if getattr(s, "hold_lock", False):
        lock_fd = os.open(s.run / ".lock", os.O_RDONLY | os.O_CREAT)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        result = python(s.script, *s.args, env=s.env)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout[-1500:], result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert s.fragment in lines[0], (s.fragment, lines[0])
    named = getattr(s, "fragment_file", None)
    if named is not None:
        assert str(named) in lines[0], (str(named), lines[0])
    assert "weights_only=False" not in result.stderr  # torch's advice would be to load it unsafely
    assert _changed(before, snapshot(tmp_path), s.may_change) == []


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


# --------------------------------------------------------------------------- labels as written
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


def test_a_one_bit_label_trains_as_class_one_in_a_folder_data_set(tmp_path):
    """The folder data set reads a 1-bit mask (how Image.fromarray(mask.astype(bool)) saves it)
    as classes 0 and 1, not 0 and 255 (= ignored)."""
    from datasets import build_source
    for split in ("train",):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir(parents=True)
    mask = np.zeros((8, 8), bool)
    mask[:, 4:] = True
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "images" / "a.png")
    Image.fromarray(mask).save(tmp_path / "train" / "labels" / "a.png")
    src = build_source("folder", tmp_path, "train", classes=["bg", "fg"])
    np.testing.assert_array_equal(src.read(0)[1], mask.astype(np.uint8))


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


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_an_annotation_label_outside_the_annotate_folder_is_refused(tmp_path, how):
    from al.annotate import AnnotationError, Task, read_annotations, write_task
    region = np.ones((6, 8), bool)
    image = np.zeros((6, 8, 3), np.uint8)
    manifest = write_task(tmp_path / "annotate", "q", ["bg", "fg"], [Task("a", None, image, region, image)], ["a"],
                          np.zeros((1, 1, 1), bool))
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(np.zeros((6, 8), np.uint8)))
    data = json.loads(manifest.read_text())
    if how == "symlink":
        (manifest.parent / "labels" / "a.png").symlink_to(outside)
        message = "outside the annotate folder"
    else:
        data["items"][0]["label"] = "../outside.png" if how == "dotdot" else str(outside)
        message = "may not use '..'"
    manifest.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=message):
        read_annotations(manifest, {"a": region}, num_classes=2)


def test_a_one_bit_annotation_is_imported_as_indices(tmp_path):
    from al.annotate import Task, read_annotations, write_task
    region = np.zeros((6, 8), bool)
    region[:, :4] = True
    image = np.zeros((6, 8, 3), np.uint8)
    manifest = write_task(tmp_path / "annotate", "q", ["bg", "fg"], [Task("a", None, image, region, image)], ["a"],
                          np.zeros((1, 1, 1), bool))
    mask = np.zeros((6, 8), bool)
    mask[3:, :] = True
    Image.fromarray(mask).save(tmp_path / "annotate" / "labels" / "a.png")
    got = read_annotations(manifest, {"a": region}, num_classes=2)["a"]
    np.testing.assert_array_equal(got[:, :4], mask[:, :4].astype(np.uint8))
    assert (got[:, 4:] == 255).all()


# --------------------------------------------------------------------------- --overwrite keeps what is not a run
def test_overwrite_never_deletes_the_configs_or_the_project(tmp_path):
    from core.config import CONFIG_DIR, PROJECT_ROOT, ConfigError, load_config
    from al.guard import check_overwrite
    cfg = load_config("demo", [f"data.root={tmp_path}"])
    for folder in (CONFIG_DIR, PROJECT_ROOT, PROJECT_ROOT.parent):
        with pytest.raises(ConfigError, match="never deletes it"):
            check_overwrite(folder, cfg)


def test_overwrite_moves_the_annotators_labels_aside(human_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(human_run["run"], run, symlinks=True)
    labels = run / "01_query1" / "annotate" / "labels"
    (labels / "x.png").write_bytes(png_bytes(np.zeros((48, 64), np.uint8)))
    from al.guard import annotator_label_dirs, check_overwrite, clear_run, describe_overwrite
    from core.config import load_config
    cfg = load_config(str(human_run["config"]), [f"output_dir={run}"])
    check_overwrite(run, cfg)
    aside = tmp_path / "run.annotator_labels"
    assert f"after moving the annotator's label files (1 folders) to {aside}" in describe_overwrite(run)
    assert annotator_label_dirs(run) == [labels]
    assert clear_run(run) == aside
    assert (aside / "01_query1" / "annotate" / "labels" / "x.png").is_file()
    assert sorted(os.listdir(run)) == [".lock"]


# --------------------------------------------------------------------------- the lock
_HOLD = """
import os, sys, time
from al.guard import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_killed_holder_releases_the_lock(tmp_path):
    from core.config import ConfigError
    from al.guard import RunLock
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    RunLock(tmp_path).acquire()  # the kernel released it with the process


# --------------------------------------------------------------------------- caches rebuilt, disks full
def test_a_damaged_scan_cache_is_rebuilt(al_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(al_run["run"], run, symlinks=True)
    np.savez(run / "data_check.npz", ids=np.array([object()], dtype=object), valid=np.zeros(1))  # a pickle
    cfg = write_config(tmp_path, "tiny_al", run, al_run["data"])
    result = run_script("train_al.py", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: {run / 'data_check.npz'} is damaged" in result.stdout
    with np.load(run / "data_check.npz", allow_pickle=False) as data:
        assert len(data["ids"]) == 12


def test_a_full_disk_names_the_file_and_keeps_the_last_good_checkpoint(al_run, tmp_path):
    cfg = write_config(tmp_path, "cfg", tmp_path / "run", al_run["data"], stages=TEACHER_ONLY)
    # The teacher checkpoints every 2 steps: the second checkpoint (step 4) meets a full disk.
    result = run_script("train_al.py", cfg, env={"S4AL_DISK_FULL": "step_00000004.pth:1"})
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # after the progress bar
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write "), result.stderr[-3000:]
    assert str(tmp_path / "run" / "00_teacher" / "checkpoints" / "step_00000004.pth") in lines[0]
    assert "No space left on device" in lines[0]
    ckpts = sorted(p.name for p in (tmp_path / "run" / "00_teacher" / "checkpoints").iterdir())
    assert ckpts == ["step_00000002.pth", "step_00000002.pth.sha256"]
    resumed = run_script("train_al.py", cfg)
    assert resumed.returncode == 0 and "resuming at step 2/6" in resumed.stdout, resumed.stderr[-3000:]


def test_world_size_is_recorded_per_stage(al_run):
    stages = json.loads((al_run["run"] / "summary.json").read_text())["stages"]
    assert [s["world_size"] for s in stages] == [1, 1, 1]


def test_summarize_lists_and_skips_an_unreadable_run(al_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(al_run["run"], runs / "good", symlinks=True)
    (runs / "bad").mkdir()
    (runs / "bad" / "summary.json").write_text("{not json")
    result = python("experiments/summarize.py", str(runs), "--out", str(tmp_path / "r.md"), "--no-plot")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"warning: skipped {runs / 'bad' / 'summary.json'}" in result.stderr
    report = (tmp_path / "r.md").read_text()
    assert "Skipped runs" in report and "tiny_al" in report


def test_an_error_under_torchrun_is_printed_once(al_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(al_run["run"], run, symlinks=True)
    (run / "00_teacher" / "metrics.json").write_text("{")
    cfg = write_config(tmp_path, "tiny_al", run, al_run["data"])
    result = run_script("train_al.py", cfg, nproc=2)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{run / '00_teacher' / 'metrics.json'}: run record damaged" in errors[0], \
        result.stderr[-3000:]
