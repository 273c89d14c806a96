"""al/rundir.py: a stage's record (the final mIoU, the best evaluation with its step), and a run saved
before a config key existed resumes while a changed value still does not."""
import pytest
import yaml

from core.config import ConfigError, load_config


def test_stage_record_keeps_the_final_miou_and_the_best_evaluation_with_its_step():
    from core.config import Config
    from al.rundir import stage_record
    stage = Config.wrap({"kind": "supervised", "epochs": 3, "iters_per_epoch": 10})
    metrics = {"miou": 50.0, "per_class_iou": {"a": 50.0}}
    record = stage_record("teacher", stage, metrics, 10.0, 1.0,
                          evals=[{"step": 10, "miou": 40.0}, {"step": 20, "miou": 55.0}])
    assert record["miou"] == 50.0  # what the paper comparison uses: the final model
    assert record["best"] == {"miou": 55.0, "step": 20, "of_steps": 30}
    # No evaluation during training: the best is the final one, at the last step.
    assert stage_record("teacher", stage, metrics, 10.0, 1.0)["best"] == {"miou": 50.0, "step": 30, "of_steps": 30}


def test_a_run_saved_before_a_key_existed_resumes_and_a_changed_value_still_does_not(tmp_path):
    from al.rundir import check_output_dir
    from core.schema import with_new_defaults
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
