import os

# Same reason as in train_al.py: spinning OpenMP threads crawl when loader workers or a second
# process share the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def al_run(tmp_path_factory):
    """One uninterrupted tiny AL run (teacher -> self-train -> query), shared by several tests."""
    from tests.pipeline_helpers import run_script, write_config

    base = tmp_path_factory.mktemp("al")
    data = tmp_path_factory.getbasetemp() / "synthetic"
    cfg = write_config(base, "tiny_al", base / "run", data)
    result = run_script("train_al.py", cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"config": cfg, "run": base / "run", "data": data, "stdout": result.stdout, "base": base}
