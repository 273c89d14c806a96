"""core/distributed.py: setup passes the collective timeout to the process group, and a folder that
one rank writes and another cannot see (a node without the shared file system) is refused on every
rank (2 gloo processes)."""
from __future__ import annotations

import datetime
import json
import os

import pytest
import torch.multiprocessing as mp

from core import distributed
from tests.helpers import free_port


def test_setup_passes_the_collective_timeout(monkeypatch):
    seen = {}
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    ctx = distributed.setup("cpu", timeout_minutes=90)
    assert ctx.rank == 1 and ctx.world_size == 2
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(minutes=90)}


# --------------------------------------------------------------------------- a folder not shared
def _check_worker(rank: int, port: int, cases: list[list[str]], out: str) -> None:
    """Each case: the folder each rank looks at (the same path, seen from each node)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    ctx = distributed.setup("cpu", timeout_minutes=2)
    messages = []
    try:
        for folders in cases:
            try:
                distributed.check_shared_folder(folders[rank], ctx, "output_dir", wait_s=1.0)
                messages.append("passed")
            except ValueError as err:
                messages.append(str(err))
    finally:
        distributed.cleanup()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(messages, f)


@pytest.mark.slow
def test_a_folder_another_node_does_not_see_is_refused_on_every_rank(tmp_path):
    shared, node0, node1 = tmp_path / "shared", tmp_path / "node0", tmp_path / "node1" / "node0"
    for folder in (shared, node0, node1):
        folder.mkdir(parents=True)
    # Case 2: rank 1 looks at its own disk, where the same path name is another folder.
    cases = [[str(shared), str(shared)], [str(node0), str(node1)]]
    mp.spawn(_check_worker, args=(free_port(), cases, str(tmp_path)), nprocs=2, join=True)
    messages = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [m[0] for m in messages] == ["passed", "passed"]
    for (_, message), folder in zip(messages, (node0, node1)):  # refused on both ranks, each naming its view
        assert message.startswith(f"output_dir {folder} is not shared between the nodes: rank 1 on "), message
        assert "1 of 2 ranks do not" in message
    assert [list(f.iterdir()) for f in (shared, node0, node1)] == [[], [], []]  # no probe left behind
