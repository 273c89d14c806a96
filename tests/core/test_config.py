"""Config system: _base_ inheritance, overrides, strict schema, name resolution."""
from pathlib import Path

import pytest
import yaml

from core.config import CONFIG_DIR, ConfigError, dump_config, load_config, resolve_config_path


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


def test_a_run_saved_before_a_key_existed_resumes_and_a_changed_value_still_does_not(tmp_path):
    from al.rundir import check_output_dir
    from core.config import with_new_defaults
    cfg = load_config("demo", [f"output_dir={tmp_path / 'run'}"])
    older = cfg.to_dict()
    del older["query"]["mc_passes"]           # written by the code before query.mc_passes existed
    del older["stages"]["student"]["eval_every"]
    assert with_new_defaults(older) == cfg.to_dict()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(older, sort_keys=False))
    check_output_dir(cfg, overwrite=False)    # the same run: it resumes
    changed = load_config("demo", [f"output_dir={tmp_path / 'run'}", "query.mc_passes=4"])
    with pytest.raises(ConfigError, match=r"query.mc_passes: '<absent>' -> 4|query.mc_passes: 8 -> 4"):
        check_output_dir(changed, overwrite=False)


def test_init_from_reuses_the_stages_before_the_first_query_whatever_mc_passes_says(tmp_path):
    from al.reuse import shared_stages
    ours = load_config("demo").to_dict()
    theirs = load_config("demo", ["query.mc_passes=4"]).to_dict()
    assert shared_stages(ours, theirs, tmp_path) == ["teacher", "student"]  # query1 used the query settings
    assert shared_stages(ours, load_config("demo").to_dict(), tmp_path) == ["teacher", "student", "query1", "query2"]
