"""Issue 21: every bad input and damaged file is one `error:` line naming the file or key, exit code
2, and nothing created, changed or deleted; nothing read from outside; one process per run
directory. (Labels read as written: tests/datasets/test_decode.py; an annotation outside its
folder: tests/al/test_annotate.py; --overwrite and the lock: tests/al/test_guard.py.)

The table (CASES) runs the real scripts. Each case prepares its inputs in a fresh folder (a copy
of the tiny data set, a copy of a finished run where it needs one), takes a snapshot of every
file's bytes, runs one command and checks: exit code 2, stderr is exactly one line, it starts
with `error:` and names what it must name, no traceback, and the snapshot is unchanged.

Issue 8's older table (BAD_INPUTS, at the end) checks train_al.py's first checks the same way:
one `error:` line, exit code 2, no run directory.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import png_bytes, run_python, run_script, write_config

pytestmark = pytest.mark.slow

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
# (the `human_run` fixture is in tests/conftest.py)
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
        lock_fd = os.open(s.run / ".lock", os.O_RDWR | os.O_CREAT)
        fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the kind of lock al/guard.RunLock takes
    try:
        result = run_python(s.script, *s.args, env=s.env)
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


# --------------------------------------------------------------------------- issue 8's table
def _bad_data(tmp_path, al_run, damage):
    data = tmp_path / "data"
    shutil.copytree(al_run["data"], data)
    damage(data)
    return data


def _corrupt_image(d):
    (d / "train" / "synth_train_0002.png").write_bytes(b"not a png at all")


def _shrink_label(d):
    import cv2
    p = d / "trainannot" / "synth_train_0003.png"
    cv2.imwrite(str(p), cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[:40])


def _bad_label_value(d):
    import cv2
    p = d / "trainannot" / "synth_train_0004.png"
    lab = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 42
    cv2.imwrite(str(p), lab)


def _missing_split_entry(d):
    (d / "train" / "synth_train_0005.png").unlink()


BAD_INPUTS = [
    # (name, overrides, data damage, fragment of the one-line error)
    ("unknown key", ["model.widht=3"], None, "unknown key model.widht"),
    ("wrong type", ["optim.lr=fast"], None, "optim.lr (from command line): expected float"),
    ("negative budget", ["query.budget_pct=-2"], None, "query.budget_pct"),
    ("budget over pool", ["query.selection=global", "query.budget_pct=80"], None, "more than the whole pool"),
    ("regions over image", ["query.regions_per_image=13"], None, "exceeds the 3x4 regions"),
    ("region larger than image", ["query.region_size=[64,64]"], None, "larger than the images"),
    ("missing data root", ["data.dataset=camvid", "data.root=/nonexistent/camvid"], None, "/nonexistent/camvid"),
    ("missing split", ["data.eval_split=/nonexistent/val.txt"], None, "/nonexistent/val.txt"),
    ("split entry without file", [], _missing_split_entry, "synth_train_0005"),
    ("corrupt image", [], _corrupt_image, "synth_train_0002.png"),
    ("image/label size mismatch", [], _shrink_label, "synth_train_0003"),
    ("label out of range", [], _bad_label_value, "synth_train_0004.png"),
    ("missing weights file", ["model.pretrained=/nonexistent/w.pth", "stage_defaults.init=pretrained"], None,
     "/nonexistent/w.pth"),
    ("init_from unknown", ["init_from=table1/camvid/row42"], None, "table1/camvid/row42"),
    ("zero epochs", ["stages.teacher.epochs=0"], None, "stages.teacher.epochs"),
    ("unknown labeled id", ["data.labeled_split=LABELS"], None, "nope"),
    ("output dir is a file", ["output_dir=FILE/run"], None, "is a file, not a folder"),
]


@pytest.mark.parametrize("name, overrides, damage, fragment", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_early_with_one_line_and_no_run_dir(al_run, tmp_path, name, overrides, damage, fragment):
    data = _bad_data(tmp_path, al_run, damage) if damage else al_run["data"]
    (tmp_path / "labels.txt").write_text("train/nope.png trainannot/nope.png\n")
    (tmp_path / "a_file").write_text("")
    overrides = [o.replace("LABELS", str(tmp_path / "labels.txt")).replace("FILE", str(tmp_path / "a_file"))
                 for o in overrides]
    if name == "unknown labeled id":  # a list whose entry exists on disk but is not in the pool
        shutil.copy(data / "val" / "synth_val_0000.png", tmp_path / "x.png")
        (tmp_path / "labels.txt").write_text(f"val/synth_val_0000.png valannot/synth_val_0000.png\n")
        fragment = "synth_val_0000"
    cfg = write_config(tmp_path, "bad", tmp_path / "run", data)
    result = run_script("train_al.py", cfg, *overrides)
    assert result.returncode == 2, (result.stdout[-1000:], result.stderr[-2000:])
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and fragment in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_weights_for_another_architecture_are_refused(al_run, tmp_path):
    from models.backbones import build_backbone
    wrong = tmp_path / "resnet50.pth"
    torch.save(build_backbone("resnet50", 16).state_dict(), wrong)
    cfg = write_config(tmp_path, "bad", tmp_path / "run", al_run["data"])
    result = run_script("train_al.py", cfg, f"model.pretrained={wrong}", "stage_defaults.init=pretrained")
    assert result.returncode == 2 and "do not fit the mobilenet_v2 backbone" in result.stderr
    assert not (tmp_path / "run").exists()


def test_run_dir_of_another_config_is_refused_unless_overwrite(al_run, tmp_path):
    cfg = write_config(tmp_path, "tiny_al", tmp_path / "run", al_run["data"])
    shutil.copytree(al_run["run"], tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()
    result = run_script("train_al.py", cfg, "optim.lr=0.5")
    assert result.returncode == 2 and "holds a run with a different config" in result.stderr
    assert "optim.lr: 0.01 -> 0.5" in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()  # nothing of the old run was touched
    assert run_script("train_al.py", cfg, "optim.lr=0.5", "--dry-run").returncode == 2
