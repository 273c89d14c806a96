"""core/config.py: _base_ inheritance, overrides, strict schema, name resolution, and the checks of
single keys: data.workers (resolved from the cores), the folder data set's keys, query.mc_passes
and bald's noise, the collective timeout and sync_bn defaults."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from core.config import CONFIG_DIR, ConfigError, auto_workers, dump_config, load_config, resolve_config_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path):
    write(tmp_path / "base" / "data.yaml", "data: {dataset: camvid, root: /data/a, crop_size: [10, 20]}\n"
                                           "optim: {lr: 0.5, momentum: 0.8}\n")
    write(tmp_path / "base" / "model.yaml", "model: {backbone: resnet50, output_stride: 8}\noptim: {lr: 0.25}\n")
    return tmp_path


def test_bases_merge_deeply_in_order_and_file_wins(tree):
    cfg_file = write(tree / "exp" / "a.yaml",
                     "_base_: [../base/data.yaml, ../base/model.yaml]\n"
                     "optim: {weight_decay: 1e-4}\n"
                     "stages: {teacher: {kind: supervised, epochs: 3}}\n")
    cfg = load_config(str(cfg_file))
    assert cfg.optim.lr == 0.25            # second base overrides the first
    assert cfg.optim.momentum == 0.8       # ... but keeps the first's other keys (deep merge)
    assert cfg.optim.weight_decay == 1e-4  # `1e-4` is a float, not the string YAML 1.1 makes of it
    assert cfg.data.crop_size == [10, 20] and cfg.model.backbone == "resnet50"
    assert cfg.stages.teacher.epochs == 3
    assert cfg.stages.teacher.iters_per_epoch == 50  # filled from stage_defaults' default
    assert cfg.name == "a" and cfg.output_dir == "runs/a"


def test_overrides_are_typed_and_win(tree):
    cfg_file = write(tree / "b.yaml", "_base_: base/data.yaml\n")
    cfg = load_config(str(cfg_file), ["optim.lr=0.02", "data.resize=[688, 688]", "seed=7",
                                      "stages.s.kind=supervised", "output_dir=/tmp/x"])
    assert cfg.optim.lr == 0.02 and cfg.data.resize == [688, 688] and cfg.seed == 7
    assert cfg.stages.s.kind == "supervised" and cfg.output_dir == "/tmp/x"


def test_stage_defaults_fill_every_stage_and_null_removes(tree):
    base = write(tree / "c0.yaml", "_base_: base/data.yaml\nstage_defaults: {epochs: 9, reco: false}\n"
                                   "stages: {t: {kind: supervised}, s: {kind: self_train, batch_unlabeled: 2}}\n")
    cfg = load_config(str(base))
    assert [cfg.stages.t.epochs, cfg.stages.s.epochs, cfg.stages.s.reco] == [9, 9, False]
    derived = write(tree / "c1.yaml", "_base_: c0.yaml\nstages: {s: null, u: {kind: supervised}}\n")
    assert list(load_config(str(derived)).stages) == ["t", "u"]


@pytest.mark.parametrize("override, fragment", [
    ("optim.lrr=1", "unknown key optim.lrr (from command line)"),
    ("optim.lr=fast", "optim.lr (from command line): expected float"),
    ("seed=1.5", "seed (from command line): expected int"),
    ("model.backbone=vgg", "'vgg' is not one of"),
    ("data.crop_size=[1, 2, 3]", "expected 2 values"),
    ("stages.t.kind=query", "a query stage needs pseudo-labeled images"),
    ("stages.t.batch_unlabeled=-1", "must not be negative"),
    ("stages.t.epochs=0", "stages.t.epochs"),
    ("stages.t.colour=red", "unknown key stages.t.colour"),
    ("query.budget_pct=-1", "query.budget_pct"),
    ("runtime.nonfinite=ignore", "runtime.nonfinite"),
    ("model.pretrained=null", "model.pretrained (from command line): must not be null"),
])
def test_bad_values_name_the_key_and_origin(tree, override, fragment):
    cfg_file = write(tree / "d.yaml", "_base_: base/data.yaml\nstages: {t: {kind: supervised}}\n")
    with pytest.raises(ConfigError, match=None) as err:
        load_config(str(cfg_file), [override])
    assert fragment in str(err.value)


def test_first_stage_must_train_a_teacher(tree):
    cfg_file = write(tree / "d2.yaml", "_base_: base/data.yaml\n"
                                       "stages: {s: {kind: self_train, batch_unlabeled: 2}}\n")
    with pytest.raises(ConfigError, match="the first stage must be `supervised`"):
        load_config(str(cfg_file))


def test_unknown_key_in_file_names_the_file(tree):
    cfg_file = write(tree / "e.yaml", "_base_: base/data.yaml\nmodel: {backbon: resnet50}\n")
    with pytest.raises(ConfigError, match=r"unknown key model.backbon \(from .*e.yaml\)"):
        load_config(str(cfg_file))


def test_missing_required_key_is_named(tmp_path):
    cfg_file = write(tmp_path / "f.yaml", "data: {dataset: camvid}\n")
    with pytest.raises(ConfigError, match="missing required key data.root"):
        load_config(str(cfg_file))


def test_missing_base_and_cycle(tmp_path):
    write(tmp_path / "g.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(str(tmp_path / "g.yaml"))
    write(tmp_path / "h1.yaml", "_base_: h2.yaml\n")
    write(tmp_path / "h2.yaml", "_base_: h1.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "h1.yaml"))


def test_names_resolve_under_configs_dir():
    path, name = resolve_config_path("table1/camvid/row1")
    assert path == (CONFIG_DIR / "table1/camvid/row1.yaml").resolve() and name == "table1/camvid/row1"
    cfg = load_config("table1/camvid/row6")
    assert cfg.output_dir == "runs/table1/camvid/row6"
    assert list(cfg.stages) == ["teacher", "student", "query1"] and cfg.stages.query1.epochs == 150
    with pytest.raises(ConfigError, match="not found"):
        resolve_config_path("table1/camvid/row99")


def test_dump_round_trips(tree):
    cfg_file = write(tree / "i.yaml", "_base_: base/data.yaml\nstages: {t: {kind: supervised}}\n")
    cfg = load_config(str(cfg_file))
    again = yaml.safe_load(dump_config(cfg))
    assert again == cfg.to_dict()


# --------------------------------------------------------------------------- data.workers
def test_auto_workers_share_the_cores_among_the_ranks_of_a_node(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr("core.config._cgroup_cpu_quota", lambda: None)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_workers() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_workers() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert auto_workers() == 1  # never 0: that would mean "load in the main process"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr("core.config._cgroup_cpu_quota", lambda: 6)  # a container's CPU quota
    assert auto_workers() == 3


def test_cgroup_quota_file_is_read(tmp_path):
    from core.config import _cgroup_cpu_quota
    f = tmp_path / "cpu.max"
    f.write_text("250000 100000\n")
    assert _cgroup_cpu_quota(str(f)) == 2
    f.write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(f)) is None
    assert _cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_data_workers_null_resolves_and_explicit_values_stay(tmp_path, monkeypatch):
    monkeypatch.setattr("core.config.auto_workers", lambda: 7)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("data: {dataset: camvid, root: x}\nstages: {}\n")
    assert load_config(str(cfg_path)).data.workers == 7
    assert load_config(str(cfg_path), ["data.workers=0"]).data.workers == 0
    assert load_config(str(cfg_path), ["data.workers=3"]).data.workers == 3
    with pytest.raises(ConfigError, match="data.workers"):
        load_config(str(cfg_path), ["data.workers=-1"])


# --------------------------------------------------------------------------- the folder data set's keys
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


# --------------------------------------------------------------------------- query and runtime keys
def test_config_checks_mc_passes_and_balds_noise():
    assert load_config("demo", ["query.strategy=bald"]).query.mc_passes >= 2
    with pytest.raises(ConfigError, match=r"^query.mc_passes \(from command line\): must be at least 2"):
        load_config("demo", ["query.mc_passes=1"])
    with pytest.raises(ConfigError, match="query.strategy.*model.dropout"):
        load_config("demo", ["query.strategy=bald", "model.dropout=0"])
    with pytest.raises(ConfigError, match="query.strategy.*model.stochastic_depth"):
        load_config("demo", ["query.strategy=bald", "model.backbone=resnet50", "model.stochastic_depth=0"])
    load_config("demo", ["model.dropout=0", "query.strategy=margin"])  # the noise matters to bald only


def test_config_defaults_for_timeout_and_sync_bn():
    from core.config import load_config
    cfg = load_config("demo")
    assert cfg.runtime.dist_timeout_minutes == 60.0 and cfg.model.sync_bn is False
