"""Training beyond one machine, tested on one: two `torchrun` launchers act as two nodes
(--nnodes 2 --node-rank 0/1, c10d rendezvous on 127.0.0.1, one gloo process each) and run the tiny
AL config end to end. They must give what the same run on one node with two processes gives (the
`ddp_run` fixture: same world size, so bit-identical weights, pools and mIoUs) and select the cells
a one-process run selects from the same teacher; `torchrun` with one process trains as plain
python does. (A folder another node does not see: tests/core/test_distributed.py.)"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import (DDP_STAGES, REPO, assert_same_weights, final_weights, free_port, pool_cells,
                           query_alone_from, script_env, write_config)

pytestmark = pytest.mark.slow
STAGES = ("00_teacher", "01_query1")


def _node(node_rank: int, port: int, config) -> subprocess.Popen:
    env = script_env("1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
           "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
           "--rdzv-id", "two-node-test", "--rdzv-conf", f"is_host={'true' if node_rank == 0 else 'false'}",
           "--local-addr", "127.0.0.1", "train_al.py", "--config", str(config)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def two_nodes(ddp_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("two_nodes")
    cfg = write_config(base, "ddp", base / "run", ddp_run["data"], stages=DDP_STAGES)
    port = free_port()
    nodes = [_node(rank, port, cfg) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    return {"config": cfg, "run": base / "run", "data": ddp_run["data"], "stdout": outputs[0][0]}


def _metrics(run, stage):
    return json.loads((run / stage / "metrics.json").read_text())


def test_two_nodes_equal_one_node_with_two_processes(two_nodes, ddp_run):
    ours, theirs = two_nodes["run"], ddp_run["run"]
    summary = json.loads((ours / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2
    for stage in STAGES:
        mine, other = _metrics(ours, stage), _metrics(theirs, stage)
        digests = mine["weights_sha256_per_rank"]
        assert len(digests) == 2 and digests[0] == digests[1], stage  # the two nodes agree
        assert digests == other["weights_sha256_per_rank"], stage       # ... with one node's run
        assert mine["pool_sha256_per_rank"] == other["pool_sha256_per_rank"], stage
        assert (pool_cells(ours / stage / "pool.npz") == pool_cells(theirs / stage / "pool.npz")).all()
    theirs_summary = json.loads((theirs / "summary.json").read_text())
    assert [s["miou"] for s in summary["stages"]] == [s["miou"] for s in theirs_summary["stages"]]
    assert_same_weights(final_weights(ours), final_weights(theirs))
    # the query did select cells (so the equal pools are not both just the initial one)
    assert (pool_cells(ours / "01_query1" / "pool.npz") != pool_cells(ours / "00_teacher" / "pool.npz")).any()
    assert "process group gloo" in two_nodes["stdout"]


def test_one_process_selects_what_the_two_nodes_selected(two_nodes, tmp_path):
    # One process reuses the two-node teacher (init_from), then pseudo-labels, scores and selects alone.
    query_alone_from(two_nodes, tmp_path)


def test_torchrun_with_one_process_joins_a_group_and_trains_as_plain_python(al_run, tmp_path):
    # `torchrun --nproc_per_node 1` runs the DDP and collective code (gloo here, NCCL on a GPU)
    # in a world of one; the weights must be those of the plain one-process run.
    cfg = write_config(tmp_path, "tiny_al", tmp_path / "run", al_run["data"])
    env = script_env("2")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                             "train_al.py", "--config", str(cfg)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 1, process group gloo" in result.stdout
    assert_same_weights(final_weights(tmp_path / "run"), final_weights(al_run["run"]))
    assert (pool_cells(tmp_path / "run" / "02_query1" / "pool.npz") ==
            pool_cells(al_run["run"] / "02_query1" / "pool.npz")).all()
