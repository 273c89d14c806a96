"""What each stage actually trains on and starts from, checked against expectations worked out in
the test, never against a second run of the same code (issue 16):
  - pseudo labels = the previous stage's final weights, noise off, cut at `pseudo.threshold`;
  - a recorded mIoU = the noise-free model evaluated by hand (student noise off in evaluation);
  - a stage starts from its configured init (`pretrained` file / `scratch` with the stage seed /
    the previous stage's weights);
  - a global-budget query reveals exactly its budget, the top-scoring unlabeled cells, and a second
    cycle never re-reveals a cell of the first;
  - the regions a query selects do not depend on the labels of unlabeled images."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from core.config import load_config
from datasets.decode import read_label_png
from engine.data import source
from models.build import make_model
from query.pool import LabelPool
from tests.helpers import noise_free_model, run_script, softmax_of_image, stage_weights, write_config, write_png

pytestmark = pytest.mark.slow

DEFAULT_THRESHOLD = 0.7  # core/config.py's default; the tiny config sets another one


# --------------------------------------------------------------------------- pseudo labels
@pytest.mark.parametrize("stage, teacher", [("01_student", "00_teacher"), ("02_query1", "01_student")])
def test_pseudo_labels_are_the_previous_stage_cut_at_the_threshold(al_run, stage, teacher):
    cfg = load_config(str(al_run["config"]))
    threshold = cfg.pseudo.threshold
    assert threshold != DEFAULT_THRESHOLD
    src = source(cfg, cfg.data.train_split)
    model = noise_free_model(cfg, stage_weights(al_run["run"], teacher), src.num_classes)
    pngs = sorted((al_run["run"] / stage / "pseudo").glob("*.png"))
    assert len(pngs) == 9  # the images not fully labeled
    kept = dropped = kept_below_default = 0
    for png in pngs:
        index = src.ids.index(png.stem.replace("__", "/"))
        conf, pred = softmax_of_image(model, src.image_path(index)).max(dim=0)
        conf, pred = conf.numpy(), pred.numpy()
        expected = np.where(conf >= threshold, pred, 255)
        # Another batch size may move a probability by an ulp: skip pixels at the cut-off itself.
        at_cutoff = np.abs(conf - threshold) < 1e-5
        got = read_label_png(png)  # a palette PNG: its indices are the data
        assert got.shape == expected.shape, png.name
        wrong = (got != expected) & ~at_cutoff
        assert int(wrong.sum()) == 0, f"{png.name}: pixels differ from the teacher's thresholded argmax"
        kept += int((expected != 255).sum())
        dropped += int((expected == 255).sum())
        kept_below_default += int(((expected != 255) & (conf < DEFAULT_THRESHOLD)).sum())
    # The comparison has teeth: both outcomes occur, and pixels the default cut-off would drop are kept.
    assert kept > 0 and dropped > 0 and kept_below_default > 0, (kept, dropped, kept_below_default)


# --------------------------------------------------------------------------- evaluation
def _miou_by_hand(model, src) -> tuple[float, list]:
    """Confusion matrix by a plain loop over images, IoU per class (None if absent), mean in %."""
    n = src.num_classes
    confusion = np.zeros((n, n), dtype=np.int64)
    for i in range(len(src)):
        pred = softmax_of_image(model, src.image_path(i)).argmax(dim=0).numpy()
        _, label = src.read(i)
        valid = label != 255
        np.add.at(confusion, (label[valid], pred[valid]), 1)
    ious = []
    for c in range(n):
        union = confusion[c, :].sum() + confusion[:, c].sum() - confusion[c, c]
        ious.append(100.0 * confusion[c, c] / union if union else None)
    present = [v for v in ious if v is not None]
    return sum(present) / len(present), ious


@pytest.mark.parametrize("stage", ["00_teacher", "01_student", "02_query1"])
def test_recorded_miou_is_the_noise_free_model_evaluated_by_hand(al_run, stage):
    # 01_student and 02_query1 are trained with dropout (noise: true); evaluation must not apply it.
    cfg = load_config(str(al_run["config"]))
    src = source(cfg, cfg.data.eval_split)
    model = noise_free_model(cfg, stage_weights(al_run["run"], stage), src.num_classes)
    miou, ious = _miou_by_hand(model, src)
    recorded = json.loads((al_run["run"] / stage / "metrics.json").read_text())["eval"]
    assert recorded["miou"] == pytest.approx(miou, abs=1e-6)
    assert [recorded["per_class_iou"][c] for c in src.classes] == pytest.approx(ious, abs=1e-6)


# --------------------------------------------------------------------------- init and global query
# lr = 0 (and no momentum / decay): every parameter ends its stage exactly where it started, so a
# stage's weights.pth shows its init. (BatchNorm running statistics still move: parameters only.)
FROZEN = ["optim.lr=0", "optim.momentum=0", "optim.weight_decay=0", "query.selection=global",
          "query.budget_pct=5"]
FROZEN_STAGES = """
stages:
  teacher: {kind: supervised, batch_labeled: 2, init: pretrained, epochs: 1, iters_per_epoch: 2}
  student: {kind: self_train, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: scratch, epochs: 1, iters_per_epoch: 2}
  query1: {kind: query, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, epochs: 1, iters_per_epoch: 2}
  query2: {kind: query, batch_labeled: 1, batch_unlabeled: 2, noise: true, init: teacher, epochs: 1, iters_per_epoch: 2}
"""


@pytest.fixture(scope="module")
def frozen_run(al_run, tmp_path_factory):
    from models.backbones import build_backbone
    base = tmp_path_factory.mktemp("frozen")
    torch.manual_seed(99)
    # A weights file unlike any initialisation the pipeline could produce by itself.
    backbone = {k: v + 0.25 if v.is_floating_point() else v
                for k, v in build_backbone("mobilenet_v2", 16).state_dict().items()}
    torch.save(backbone, base / "backbone.pth")
    overrides = FROZEN + [f"model.pretrained={base / 'backbone.pth'}"]
    config = write_config(base, "frozen", base / "run", al_run["data"], stages=FROZEN_STAGES)
    result = run_script("train_al.py", config, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = load_config(str(config), overrides)
    return {"run": base / "run", "cfg": cfg, "backbone": backbone,
            "num_classes": source(cfg, cfg.data.train_split).num_classes}


def _parameters(state: dict, cfg, num_classes: int) -> dict:
    """The trainable tensors of a state dict (not BatchNorm's running statistics)."""
    names = {n for n, _ in make_model(cfg.model, num_classes, rep_head=True, noise=False,
                                      pretrained="none").named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def _assert_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_pretrained_init_starts_from_the_weights_file(frozen_run):
    r = frozen_run
    teacher = _parameters(stage_weights(r["run"], "00_teacher"), r["cfg"], r["num_classes"])
    backbone = {k: v for k, v in teacher.items() if k.startswith("backbone.")}
    assert len(backbone) > 50
    expected = {k: r["backbone"][k.removeprefix("backbone.")] for k in backbone}
    _assert_equal(backbone, expected, "00_teacher backbone vs the pretrained file")


def test_scratch_init_is_a_fresh_model_from_the_stage_seed(frozen_run):
    r = frozen_run
    cfg = r["cfg"]
    # al/experiment.py seeds every stage with seed * 100 + index before building its model.
    torch.manual_seed(cfg.seed * 100 + 1)
    fresh = make_model(cfg.model, r["num_classes"], rep_head=True, noise=True, pretrained="none").state_dict()
    student = stage_weights(r["run"], "01_student")
    _assert_equal(_parameters(student, cfg, r["num_classes"]), _parameters(fresh, cfg, r["num_classes"]),
                  "01_student (init scratch) vs a fresh model")


def test_teacher_init_copies_the_previous_stage(frozen_run):
    r = frozen_run
    params = {s: _parameters(stage_weights(r["run"], s), r["cfg"], r["num_classes"])
              for s in ("00_teacher", "01_student", "02_query1", "03_query2")}
    _assert_equal(params["02_query1"], params["01_student"], "02_query1 (init teacher) vs 01_student")
    _assert_equal(params["03_query2"], params["02_query1"], "03_query2 (init teacher) vs 02_query1")
    # Two stages back would be another model: copying the wrong stage cannot pass unnoticed.
    assert not torch.equal(params["00_teacher"]["classifier.1.weight"], params["01_student"]["classifier.1.weight"])


def test_global_query_reveals_exactly_its_budget_and_never_a_cell_twice(frozen_run):
    run = frozen_run["run"]
    # 12 images of 48x64 px, 16x16 px cells (3x4 per image); 3 images labeled at the start.
    # budget_pct 5: 5% of 12 * 48 * 64 px = 1843.2 px = 7.2 cells -> 7 cells per cycle.
    budget = 7
    pools = [LabelPool.load(run / s / "pool.npz") for s in ("01_student", "02_query1", "03_query2")]
    assert int(pools[0].cells.sum()) == 3 * 12
    summary = json.loads((run / "summary.json").read_text())["stages"]
    for cycle, (before, after) in enumerate(zip(pools, pools[1:]), start=1):
        assert int((after.cells & before.cells).sum()) == int(before.cells.sum())  # nothing unlabeled again
        new = after.cells & ~before.cells
        assert int(after.cells.sum()) == int(before.cells.sum()) + budget, f"cycle {cycle}"
        # The `budget` highest-scoring cells not labeled before, over the whole pool.
        scores = np.load(run / f"0{cycle + 1}_query{cycle}" / "pseudo_done.npz")["scores"]
        unlabeled = np.flatnonzero(~before.cells.ravel())
        top = unlabeled[np.argsort(-scores.ravel()[unlabeled], kind="stable")[:budget]]
        assert sorted(np.flatnonzero(new.ravel()).tolist()) == sorted(top.tolist()), f"cycle {cycle}"
        expected_pct = 100.0 * (3 * 48 * 64 + cycle * budget * 256) / (12 * 48 * 64)
        assert summary[cycle + 1]["labeled_pixel_pct"] == pytest.approx(expected_pct, abs=1e-9)


# --------------------------------------------------------------------------- selection never reads ground truth
@pytest.mark.slow
def test_selected_regions_do_not_depend_on_the_labels_of_unlabeled_images(al_run, tmp_path):
    """The same student and scores, but every unlabeled image's label is void: the query must
    pick exactly the same regions (a query step has no labels of unlabeled images)."""
    from core.config import load_config, save_config
    data = tmp_path / "data"
    shutil.copytree(al_run["data"], data)
    initial = LabelPool.load(al_run["run"] / "00_teacher" / "pool.npz")
    for i in range(len(initial)):
        if not initial.cells[i].any():
            label = data / "trainannot" / f"{initial.ids[i]}.png"
            write_png(label, np.full(cv2.imread(str(label), cv2.IMREAD_UNCHANGED).shape, 11, np.uint8))
    run = tmp_path / "run"
    cfg_file = write_config(tmp_path, "tiny_al", run, data)
    overrides = ["data.dataset=camvid"]  # read the modified copy as it is (never regenerated)
    run.mkdir()
    save_config(load_config(str(cfg_file), overrides), run / "config.yaml")
    for stage in ("00_teacher", "01_student"):  # the finished teacher and student, reused as they are
        shutil.copytree(al_run["run"] / stage, run / stage)
    result = run_script("train_al.py", cfg_file, *overrides, die_at="train_step:1")  # stop once selected
    assert (run / "02_query1" / "pool.npz").is_file(), result.stdout[-2000:] + result.stderr[-2000:]
    assert "already finished" in result.stdout
    selected = LabelPool.load(run / "02_query1" / "pool.npz").cells
    expected = LabelPool.load(al_run["run"] / "02_query1" / "pool.npz").cells
    assert selected.sum() == expected.sum() > initial.cells.sum()
    np.testing.assert_array_equal(selected, expected)
    scores = np.load(run / "02_query1" / "pseudo_done.npz")["scores"]
    np.testing.assert_array_equal(scores, np.load(al_run["run"] / "02_query1" / "pseudo_done.npz")["scores"])
    assert json.loads((al_run["run"] / "summary.json").read_text())["finished"]
