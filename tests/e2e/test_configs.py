"""Every shipped config resolves and passes --dry-run on a data tree of the right layout, and the
paper rows say what the paper's tables say."""
import cv2
import numpy as np
import pytest

from core.config import CONFIG_DIR, load_config
from core.distributed import DistContext
from tests.helpers import REPO, write_png

CONFIGS = sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
                 for p in CONFIG_DIR.rglob("*.yaml") if "_base_" not in p.parts)


@pytest.fixture(scope="module")
def fake_roots(tmp_path_factory):
    """Trees with the real layouts and file names (CamVid 360x480; every Cityscapes file named by
    the shipped split lists), small enough to build in a second: dry-run only indexes files."""
    root = tmp_path_factory.mktemp("roots")
    camvid = root / "camvid"
    for split, n in (("train", 20), ("val", 5), ("test", 5)):
        for i in range(n):
            write_png(camvid / split / f"{split}_{i:03d}.png", np.zeros((360, 480, 3), np.uint8))
            write_png(camvid / f"{split}annot" / f"{split}_{i:03d}.png", np.zeros((360, 480), np.uint8))
    city = root / "cityscapes"
    image, label = np.zeros((8, 16, 3), np.uint8), np.zeros((8, 16), np.uint8)
    ok_i, enc_i = cv2.imencode(".png", image)
    ok_l, enc_l = cv2.imencode(".png", label)
    lists = list((REPO / "splits" / "cityscapes").rglob("*.txt"))
    for line in {ln for f in lists for ln in f.read_text().splitlines() if ln.strip()}:
        img, lab = line.split()
        for rel, data in ((img, enc_i), (lab, enc_l)):
            (city / rel).parent.mkdir(parents=True, exist_ok=True)
            (city / rel).write_bytes(data.tobytes())
    own = root / "folder"
    for split in ("train", "val"):
        for i in range(10):
            write_png(own / split / "images" / f"{i:04d}.png", np.zeros((360, 480, 3), np.uint8))
            write_png(own / split / "labels" / f"{i:04d}.png", np.zeros((360, 480), np.uint8))
    return {"camvid": camvid, "cityscapes": city, "folder": own}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_dry_run(name, fake_roots, tmp_path):
    from al.checks import RunPlan
    cfg = load_config(name)
    overrides = [f"output_dir={tmp_path / 'run'}"]
    if cfg.data.dataset != "synthetic":
        overrides.append(f"data.root={fake_roots[cfg.data.dataset]}")
    if cfg.data.dataset == "camvid":
        overrides.append("data.eval_split=val")
    if cfg.data.dataset == "synthetic":
        overrides.append(f"data.root={tmp_path / 'synthetic'}")
    cfg = load_config(name, overrides)
    plan = RunPlan(cfg, DistContext(), dry_run=True, overwrite=False, overrides=overrides)
    text = plan.describe()
    assert f"config: {name}" in text and "parameters" in text
    assert text.count("\nstage ") == len(cfg.stages)
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


TABLE1 = {  # (epochs, batch labeled, batch unlabeled, iterations/epoch, ReCo) of each row's last stage
    "camvid": [(100, 4, 0, 50, False), (100, 4, 0, 50, True), (100, 2, 2, 100, True), (100, 2, 4, 100, True),
               (100, 2, 4, 100, True), (150, 2, 4, 100, True)],
    "cityscapes": [(100, 4, 0, 100, False), (100, 4, 0, 100, True), (100, 2, 2, 300, True),
                   (100, 2, 4, 300, True)] + [(100, 2, 4, 300, True)] * 4 + [(200, 2, 4, 300, True)],
}


@pytest.mark.parametrize("dataset", ["camvid", "cityscapes"])
def test_table1_rows_match_the_paper(dataset):
    for row, expected in enumerate(TABLE1[dataset], start=1):
        cfg = load_config(f"table1/{dataset}/row{row}")
        last = list(cfg.stages.values())[-1]
        got = (last.epochs, last.batch_labeled, last.batch_unlabeled, last.iters_per_epoch, last.reco)
        assert got == expected, f"row {row}"
        queries = sum(s.kind == "query" for s in cfg.stages.values())
        assert queries == max(0, min(row - 4, 4 if dataset == "cityscapes" else 1))
        assert cfg.model.backbone == "mobilenet_v2" and cfg.model.output_stride == 16


def test_table_s1_rows_match_the_paper():
    rows = {"r50_100": ("resnet50", "1_30", 400), "r50_372": ("resnet50", "1_8", 200),
            "r50_744": ("resnet50", "1_4", 200), "r101d_186": ("resnet101_deepstem", "1_16", 400),
            "r101d_372": ("resnet101_deepstem", "1_8", 300), "r101d_744": ("resnet101_deepstem", "1_4", 300),
            "r101d_1488": ("resnet101_deepstem", "1_2", 400)}
    for name, (backbone, split, iters) in rows.items():
        cfg = load_config(f"tableS1/{name}")
        assert cfg.model.backbone == backbone and cfg.model.output_stride == 8
        assert cfg.data.labeled_split == f"splits/cityscapes/{split}/labeled.txt"
        assert cfg.data.crop_size == [768, 768] and cfg.data.resize is None and cfg.eval.mode == "slide"
        students = [s for s in cfg.stages.values() if s.kind == "self_train"]
        assert len(students) == 2  # two self-training rounds
        for s in cfg.stages.values():
            assert s.epochs == 240 and s.iters_per_epoch == iters and s.reco
        assert all((s.batch_labeled, s.batch_unlabeled) == (2, 3) for s in students)


@pytest.mark.parametrize("config", ["table1/camvid/row5", "equal/camvid_r50", "supervised/camvid_full"])
def test_camvid_configs_work_at_the_papers_resolution_whatever_the_copy(tmp_path, config):
    """The 720x960 CamVid original must not silently become a 24x32 region grid: the CamVid
    configs resize to 360x480 (a no-op on the SegNet release), so the grid is the paper's 12x16."""
    from engine.data import source
    from query.pool import RegionGrid
    for i in range(2):
        write_png(tmp_path / "train" / f"f{i}.png", np.zeros((720, 960, 3), np.uint8))
        write_png(tmp_path / "trainannot" / f"f{i}.png", np.zeros((720, 960), np.uint8))
    cfg = load_config(config, [f"data.root={tmp_path}", "data.cache_dir=null"])
    assert cfg.data.resize == [360, 480]
    src = source(cfg, "train")
    image, label = src.read(0)
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    assert RegionGrid(*src.image_size(0), tuple(cfg.query.region_size)).shape == (12, 16)
