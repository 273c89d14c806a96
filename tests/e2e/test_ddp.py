"""Issue 8's promise for two DDP ranks (gloo, one node): every stage ends with identical weights on
both, a rank whose weights drifted stops the run, and one process selects the cells the two ranks
selected from the same teacher and evaluates it to their mIoU. DDP_STAGES and the `ddp_run` fixture
are in tests/helpers.py and tests/conftest.py: tests/e2e/test_multinode.py compares a two-node run
with the same run, tests/e2e/test_resume.py kills and resumes it."""
import json

import pytest
import torch

from tests.helpers import DDP_STAGES, pool_cells, query_alone_from, run_script, summary_stages, write_config

pytestmark = pytest.mark.slow


def test_two_gloo_ranks_end_every_stage_with_identical_weights(ddp_run):
    run = ddp_run["run"]
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    for stage in ("00_teacher", "01_query1"):
        metrics = json.loads((run / stage / "metrics.json").read_text())
        for key in ("weights_sha256_per_rank", "pool_sha256_per_rank"):
            digests = metrics[key]
            assert len(digests) == 2 and digests[0] == digests[1], (stage, key)


def test_a_rank_whose_weights_drifted_stops_the_run(al_run, tmp_path):
    # A 2-rank teacher with one weight of rank 1 nudged (core/faults.py) before the ranks compare.
    cfg = write_config(tmp_path, "ddp", tmp_path / "run", al_run["data"], stages=DDP_STAGES)
    result = run_script("train_al.py", cfg, "stages.query1=null", "stages.teacher.epochs=1", nproc=2,
                        env={"S4AL_PERTURB_RANK": "1"})
    assert result.returncode != 0
    assert "stage 'teacher': ranks ended with different weights" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run" / "00_teacher" / "weights.pth").exists()


def test_one_process_selects_the_same_cells_from_the_same_teacher(ddp_run, tmp_path):
    ours, _ = query_alone_from(ddp_run, tmp_path)
    assert (pool_cells(ours / "pool.npz") != pool_cells(tmp_path / "one" / "00_teacher" / "pool.npz")).any()
    # ... and evaluates the teacher to the mIoU the two ranks recorded together.
    from core.config import load_config
    from engine.data import source
    from core.distributed import DistContext
    from engine.evaluation import evaluate
    from models.build import make_model
    cfg = load_config(str(ddp_run["config"]))
    src = source(cfg, "val")
    model = make_model(cfg.model, src.num_classes, rep_head=True, noise=False, pretrained="none")
    model.load_state_dict(torch.load(ddp_run["run"] / "00_teacher" / "weights.pth", weights_only=True)["model"])
    single = evaluate(model, src, cfg, DistContext(), amp="none")
    assert single["miou"] == pytest.approx(summary_stages(ddp_run["run"])[0]["miou"], abs=1e-9)
