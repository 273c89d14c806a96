import os
import time

# Same reason as in train_al.py: spinning OpenMP threads crawl when loader workers or a second
# process share the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "env_dependent: compares with a measurement of this machine (resident memory, "
                   "allocator behaviour); deselect with -m 'not env_dependent' where that differs")


@pytest.fixture(scope="session")
def al_run(tmp_path_factory):
    """One uninterrupted tiny AL run (teacher -> self-train -> query), shared by several tests."""
    from tests.pipeline_helpers import run_script, write_config

    base = tmp_path_factory.mktemp("al")
    data = tmp_path_factory.getbasetemp() / "synthetic"
    cfg = write_config(base, "tiny_al", base / "run", data)
    started = time.time()
    result = run_script("train_al.py", cfg)
    seconds = time.time() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return {"config": cfg, "run": base / "run", "data": data, "stdout": result.stdout, "base": base,
            "seconds": seconds}


@pytest.fixture(scope="session")
def ssl_run(al_run, tmp_path_factory):
    """One uninterrupted tiny semi-supervised run: 4 labeled images, teacher -> one round."""
    from tests.pipeline_helpers import run_script, write_ssl_config

    base = tmp_path_factory.mktemp("ssl")
    ids = sorted(p.stem for p in (al_run["data"] / "train").glob("*.png"))[:4]
    cfg = write_ssl_config(base, "tiny_ssl", base / "run", al_run["data"], ids)
    result = run_script("train_ssl.py", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"config": cfg, "run": base / "run", "data": al_run["data"], "labeled": ids}


@pytest.fixture(scope="session")
def ddp_run(al_run, tmp_path_factory):
    """One uninterrupted 2-rank run (one node), shared by the agreement, one-process, kill/resume
    and two-node tests."""
    from tests.pipeline_helpers import DDP_STAGES, run_script, write_config

    base = tmp_path_factory.mktemp("ddp")
    cfg = write_config(base, "ddp", base / "run", al_run["data"], stages=DDP_STAGES)
    result = run_script("train_al.py", cfg, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"config": cfg, "run": base / "run", "data": al_run["data"]}
