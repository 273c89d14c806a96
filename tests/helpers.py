"""What tests of several packages share (the fixtures are in tests/conftest.py): the repository's
paths, tiny end-to-end runs of the real scripts, predictions by hand, the small files, models and
fake run records that more than one test file builds, and a real Label Studio server."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the machine's shared copies (CamVid); tests skip what is absent
TEST_DATA = REPO / "tests" / "data"

# --------------------------------------------------------------------------- tiny runs of the scripts
TINY = """
seed: 3
deterministic: true
data:
  dataset: synthetic
  root: {data_root}
  train_split: train
  eval_split: val
  crop_size: [48, 64]
  scale_range: [0.75, 1.25]
  workers: 0
  synthetic: {{num_train: 12, num_val: 4, num_test: 2, height: 48, width: 64, seed: 1}}
model: {{backbone: mobilenet_v2, pretrained: none, rep_dim: 8}}
loss: {{num_queries: 8, num_negatives: 16}}
runtime: {{device: cpu, amp: none, checkpoint_every: 2, log_every: 1}}
# Not the default 0.7, and between the tiny teachers' typical confidences: a pipeline that ignores
# pseudo.threshold writes other pseudo labels (tests/e2e/test_stage_contracts.py).
pseudo: {{threshold: 0.4}}
query: {{initial_fraction: 0.25, region_size: [16, 16], regions_per_image: 2, vis_images: 2}}
stage_defaults: {{epochs: 2, iters_per_epoch: 3, init: scratch}}
output_dir: {output_dir}
"""

AL_STAGES = """
stages:
  teacher: {kind: supervised, batch_labeled: 2}
  student: {kind: self_train, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, epochs: 1}
  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher}
"""


def write_config(folder: Path, name: str, output_dir: Path, data_root: Path, stages: str = AL_STAGES,
                 extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(TINY.format(data_root=data_root, output_dir=output_dir) + stages + extra)
    return path


# Two gloo ranks (tests/e2e/test_ddp.py, test_resume.py, test_multinode.py): query1 is a noisy
# student, so each rank draws its own dropout masks, yet weights, pools and resumes must agree.
# 4 steps, so a kill at its 3rd step (train_step 9, after the teacher's 6) resumes from its step-2
# checkpoint.
DDP_STAGES = ("stages:\n  teacher: {kind: supervised, batch_labeled: 2}\n"
              "  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, "
              "epochs: 1, iters_per_epoch: 4}\n")


SSL_STAGES = """
stages:
  teacher: {kind: supervised, batch_labeled: 2}
  round1: {kind: self_train, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, epochs: 1}
"""

# A query stage that waits for a person's labels (the `human_run` fixture).
HUMAN_STAGES = """
stages:
  teacher: {kind: supervised, batch_labeled: 2, epochs: 1}
  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, init: teacher, epochs: 1, iters_per_epoch: 1}
"""


def write_ssl_config(folder: Path, name: str, output_dir: Path, data_root: Path, labeled: list[str]) -> Path:
    """A tiny train_ssl.py config whose labeled split (written beside it) lists `labeled` ids."""
    split = folder / f"{name}_labeled.txt"
    split.write_text("".join(f"train/{i}.png trainannot/{i}.png\n" for i in labeled))
    path = write_config(folder, name, output_dir, data_root, stages=SSL_STAGES)
    path.write_text(path.read_text().replace("  train_split: train\n",
                                             f"  train_split: train\n  labeled_split: {split}\n"))
    return path


def script_env(threads: str, extra: dict | None = None) -> dict:
    """The environment of a script run: passive OpenMP threads, `threads` of them, and the fault
    hooks of core/faults.py off (never inherited from the caller's shell) unless `extra` sets them."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": threads}
    for hook in ("S4AL_DIE_AT", "S4AL_PERTURB_RANK"):
        env.pop(hook, None)
    env.update(extra or {})
    return env


def run_script(script: str, config: Path, *overrides: str, die_at: str | None = None, nproc: int = 1,
               timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `script` (plain python, or torchrun with `nproc` gloo ranks). Fault hooks of
    core/faults.py are off unless asked for: `die_at`, or `env` (e.g. S4AL_PERTURB_RANK)."""
    env = script_env("1" if nproc > 1 else "2", env)
    if die_at:
        env["S4AL_DIE_AT"] = die_at
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script, "--config", str(config), *overrides]
    else:
        cmd = [sys.executable, script, "--config", str(config), *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python *args` in the repository, with every fault hook (S4AL_DISK_FULL too) off unless `env` sets it."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    for hook in ("S4AL_DIE_AT", "S4AL_PERTURB_RANK", "S4AL_DISK_FULL"):
        full_env.pop(hook, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=600)


def run_snippet(code: str, *args: str) -> subprocess.CompletedProcess:
    """`python -c code *args` in the repository (a writer that kills itself with a real SIGKILL)."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def final_weights(run_dir: Path) -> dict:
    last = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit())[-1]
    return torch.load(last / "weights.pth", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ at {k}"


def pool_cells(path: Path) -> np.ndarray:
    from query.pool import LabelPool
    return LabelPool.load(path).cells


def leftover_temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if ".tmp-" in p.name or p.name.endswith(".copying")]


def run_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def summary_stages(run_dir: Path) -> list[dict]:
    return run_summary(run_dir)["stages"]


def query_alone_from(source: dict, tmp_path: Path) -> tuple[Path, Path]:
    """Rerun a multi-rank AL run's query stage in one process: reuse only its teacher (init_from;
    query1 trains 1 step instead of 4), then pseudo-label, score and select alone. Checks that
    the run worked and that the scores and the pool match the source run's; returns (our query1
    folder, theirs) for further checks. `source`: {"data", "config", "run"} of the multi-rank run."""
    stages = DDP_STAGES.replace("iters_per_epoch: 4", "iters_per_epoch: 1")
    cfg = write_config(tmp_path, "one", tmp_path / "one", source["data"], stages=stages,
                       extra=f"init_from: {source['config']}\n")
    result = run_script("train_al.py", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("] reused from ") == 1  # the teacher; query1 computed here
    ours, theirs = tmp_path / "one" / "01_query1", source["run"] / "01_query1"
    one, two = np.load(ours / "pseudo_done.npz"), np.load(theirs / "pseudo_done.npz")
    assert (one["has_scores"] == two["has_scores"]).all()
    np.testing.assert_allclose(one["scores"], two["scores"], rtol=1e-5, atol=1e-6)
    assert (pool_cells(ours / "pool.npz") == pool_cells(theirs / "pool.npz")).all()
    return ours, theirs


# --------------------------------------------------------------------------- predictions by hand
# Independent of datasets/transforms.py and engine/inference.py: what a stage's model predicts for
# an image file, computed the plainest way (used to check pseudo labels and recorded mIoUs).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def stage_weights(run_dir: Path, stage: str) -> dict:
    return torch.load(run_dir / stage / "weights.pth", weights_only=True)["model"]


def noise_free_model(cfg, state: dict, num_classes: int):
    """The stage's network with `state` loaded (every key), without student noise, in eval mode."""
    from models.build import make_model
    rep_head = any(k.startswith("representation_head.") for k in state)
    model = make_model(cfg.model, num_classes, rep_head=rep_head, noise=False, pretrained="none")
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def softmax_of_image(model, image_file: str) -> torch.Tensor:
    """(C, H, W) softmax of the model's logits for one image file, at the file's resolution."""
    rgb = cv2.imread(image_file, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0
    x = torch.from_numpy(((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy())[None]
    return model(x)[0].softmax(dim=0)


# --------------------------------------------------------------------------- image and label files
def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_png(path: Path, array: np.ndarray) -> None:
    """cv2.imwrite as it is (a label, a mask, a BGR image), into a folder made for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def png_bytes(array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> bytes:
    image = Image.fromarray(array, mode) if mode is None or mode != "1" else Image.fromarray(array.astype(bool))
    if palette is not None:
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def make_camvid(root: Path, names=("b", "a", "c"), split="train", size=(20, 30), seed=0):
    """Tiny SegNet-layout tree; returns {stem: (rgb, raw label)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in names:
        rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        raw = rng.integers(0, 12, size=size, dtype=np.uint8)      # 0..10 classes, 11 void
        write_rgb(root / split / f"{name}.png", rgb)
        write_png(root / f"{split}annot" / f"{name}.png", raw)
        written[name] = (rgb, raw)
    return written


# Your own data set (`data.dataset: folder`) of 3 classes, and a folder of photos for a campaign.
FOLDER_CLASSES = ["ground", "wall", "plant"]
PHOTO_H, PHOTO_W = 48, 64


def make_photos(root, labelled=("p0", "p1"), unlabelled=("p2", "p3", "p4", "p5")):
    """train/images: photos p0..p5, of which only `labelled` have a label; val: 2 labelled."""
    rng = np.random.default_rng(0)
    for split, names in (("train", labelled + unlabelled), ("val", ("v0", "v1"))):
        for name in names:
            write_rgb(root / split / "images" / f"{name}.png",
                      rng.integers(0, 256, (PHOTO_H, PHOTO_W, 3), dtype=np.uint8))
            if split == "val" or name in labelled:
                write_png(root / split / "labels" / f"{name}.png",
                          rng.integers(0, 3, (PHOTO_H, PHOTO_W)).astype(np.uint8))
    (root / "lists").mkdir(exist_ok=True)
    (root / "lists" / "seed.txt").write_text("".join(f"train/images/{n}.png train/labels/{n}.png\n" for n in labelled))


# Cityscapes labelIds -> train ids: road 7 -> 0, sidewalk 8 -> 1, building 11 -> 2, car 26 -> 13,
# unlabeled 0 -> 255. A cache that stored raw values would hand out 7/8/11/26.
CITY_LABEL_IDS = np.array([0, 7, 8, 11, 26], dtype=np.uint8)
CITY_NATIVE = (40, 80)  # the native size of the `city` fixture's images


def write_city_pair(root: Path, stem: str, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    h, w = CITY_NATIVE
    image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
    label = CITY_LABEL_IDS[rng.integers(0, len(CITY_LABEL_IDS), (h // 4, w // 4))].repeat(4, 0).repeat(4, 1)
    img_path = root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png"
    lab_path = root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(img_path), image)
    cv2.imwrite(str(lab_path), label)
    return img_path, lab_path


def cache_entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.npz"))


# --------------------------------------------------------------------------- weights files
def checksummed_file(path: Path, obj) -> Path:
    """A run's weights file as the training writes it: torch.save bytes and their SHA-256 beside."""
    torch.save(obj, path)
    Path(f"{path}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    return path


class RunsCode:
    """Unpickling this calls exec(): it creates `marker`. Harmless here, fatal in a real attack."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def plant_crafted(path, marker) -> None:
    """A weights-like file with a code-running object inside, and a valid .sha256 beside it."""
    checksummed_file(path, {"model": {"w": torch.zeros(2)}, "payload": RunsCode(marker)})


# --------------------------------------------------------------------------- small models and configs
class ContextNet(torch.nn.Module):
    """Two zero-padded 3x3 convs: a pixel's output depends on its 5x5 neighbourhood, and on
    where the crop border is, so sliding windows differ from the whole image, and from a
    window cut at the wrong place."""

    def __init__(self, classes: int = 5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, classes, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def pass_config(threshold: float, mc_passes: int | None = None, **eval_overrides):
    """The settings evaluate() and the pseudo-label pass read, on the `tiny_source` images: whole
    images, one scale, no flip, pseudo labels cut at `threshold` (and query.mc_passes if given)."""
    from core.config import Config
    ev = {"mode": "whole", "window": [16, 16], "stride": [8, 8], "flip": False, "scales": [1.0],
          "batch_size": 1, "window_batch": 8, **eval_overrides}
    cfg = {"eval": ev, "data": {"workers": 0}, "runtime": {"channels_last": False},
           "pseudo": {"scales": [1.0], "flip": False, "threshold": threshold, "batch_size": 1}}
    if mc_passes is not None:
        cfg["query"] = {"mc_passes": mc_passes}
    return Config.wrap(cfg)


def bn_model() -> torch.nn.Module:
    """Two convs with BatchNorm after each, seeded (sync-BN and model-wrapping tests)."""
    from torch import nn
    torch.manual_seed(0)
    # momentum=None (cumulative average) on the second BatchNorm covers both update rules.
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3, momentum=None))


NUM_CLASSES = 11  # the synthetic set's classes (CamVid's)


def training_config(setup: dict, *overrides):
    """The `tiny_training` fixture's config, with crops of its whole 32x48 images."""
    from core.config import load_config
    return load_config(str(setup["cfg_path"]), ["data.crop_size=[32,48]", *overrides])


def training_model(cfg, seed=0, **kw):
    from models.build import make_model
    torch.manual_seed(seed)
    kw.setdefault("rep_head", True)
    kw.setdefault("noise", False)
    return make_model(cfg.model, NUM_CLASSES, pretrained="none", **kw).eval()  # eval: deterministic forward


# --------------------------------------------------------------------------- strategy formulas in numpy
def numpy_entropy(p):  # p: (..., C, H, W)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=-3)


def numpy_margin(p):
    ranked = np.sort(p, axis=-3)
    return 1.0 - (ranked[..., -1, :, :] - ranked[..., -2, :, :])


def numpy_least_confidence(p):
    return 1.0 - p.max(axis=-3)


def numpy_bald(samples):  # (T, N, C, H, W)
    return numpy_entropy(samples.mean(axis=0)) - numpy_entropy(samples).mean(axis=0)


# --------------------------------------------------------------------------- fabricated run summaries
CAMVID_CLASS_NAMES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
                      "pedestrian", "bicyclist"]


def summary_stage(name, kind, pct, miou, epochs=100, wall=600.0, per_class=None):
    return {"name": name, "kind": kind, "epochs": epochs, "labeled_pixel_pct": pct,
            "miou": miou, "wall_time_s": wall,
            "per_class_iou": per_class or {c: miou for c in CAMVID_CLASS_NAMES}}


def write_summary(runs_dir, run_name, config, stages, finished=True, **extra):
    path = Path(runs_dir) / run_name / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"config": config, "finished": finished, "device": "NVIDIA H100 x4", "world_size": 4,
            "classes": CAMVID_CLASS_NAMES, "stages": stages, **extra}
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- a labelling task
# The `task_dir` fixture's annotate/ folder: images 'a' and 'b' of 48x64, three classes.
TASK_CLASSES = ["road", "car", "tree"]
TASK_PALETTE = [[128, 64, 128], [0, 0, 142], [107, 142, 35]]
TASK_H, TASK_W = 48, 64


def task_regions(image_id):
    mask = np.zeros((TASK_H, TASK_W), bool)
    if image_id == "a":
        mask[0:16, 0:32] = mask[32:48, 48:64] = True
        return mask, [[0, 0, 32, 16], [48, 32, 16, 16]]
    mask[16:32, 16:48] = True
    return mask, [[16, 16, 32, 16]]


def task_prediction(image_id):
    y, x = np.indices((TASK_H, TASK_W))
    return ((x // 16 + y // 12 + 2 * (image_id == "b")) % 3).astype(np.uint8)


# --------------------------------------------------------------------------- processes and servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A real Label Studio server for the round-trip test: started on 127.0.0.1 with its own data folder
# (SQLite database), driven through its HTTP API, stopped afterwards. Bounded in time everywhere.
LABEL_STUDIO_EMAIL, LABEL_STUDIO_PASSWORD = "annotator@example.com", "s4al-test-password"


def label_studio_executable() -> str | None:
    """The label-studio command: $S4AL_LABEL_STUDIO (what .ci/run installs), else on PATH."""
    found = os.environ.get("S4AL_LABEL_STUDIO") or shutil.which("label-studio")
    return found if found and Path(found).is_file() else None


class LabelStudioServer:
    def __init__(self, exe: str, data_dir: Path, document_root: Path, timeout_s: float = 420):
        import requests  # requirements-labelling.txt: only this test needs it
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite",
               "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
               "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
               "COLLECT_ANALYTICS": "false"}
        self.log = open(data_dir / "server.log", "w")
        self.proc = subprocess.Popen(
            [exe, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir",
             str(data_dir), "--username", LABEL_STUDIO_EMAIL, "--password", LABEL_STUDIO_PASSWORD],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.session = requests.Session()
        deadline = time.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}; see {data_dir / 'server.log'}")
            try:
                if self.session.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"label-studio did not answer within {timeout_s:.0f} s")
            time.sleep(2)
        self._login()

    def _login(self) -> None:
        self.session.get(self.url + "/user/login/", timeout=30)
        r = self.session.post(self.url + "/user/login/", timeout=30, allow_redirects=False,
                              data={"email": LABEL_STUDIO_EMAIL, "password": LABEL_STUDIO_PASSWORD,
                                    "csrfmiddlewaretoken": self.session.cookies.get("csrftoken")},
                              headers={"Referer": self.url + "/user/login/"})
        if r.status_code != 302:
            raise RuntimeError(f"label-studio login failed: {r.status_code}")

    def api(self, method: str, path: str, **kwargs):
        headers = {"X-CSRFToken": self.session.cookies.get("csrftoken", ""), "Referer": self.url}
        r = self.session.request(method, self.url + path, headers=headers, timeout=120, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the workers it started
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()
