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
    from tests.helpers import run_script, write_config

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
    from tests.helpers import run_script, write_ssl_config

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
    from tests.helpers import DDP_STAGES, run_script, write_config

    base = tmp_path_factory.mktemp("ddp")
    cfg = write_config(base, "ddp", base / "run", al_run["data"], stages=DDP_STAGES)
    result = run_script("train_al.py", cfg, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"config": cfg, "run": base / "run", "data": al_run["data"]}


@pytest.fixture(scope="session")
def human_run(al_run, tmp_path_factory):
    """A run whose query stage waits for a person's labels (the task is written)."""
    from tests.helpers import HUMAN_STAGES, run_script, write_config

    base = tmp_path_factory.mktemp("human")
    cfg = write_config(base, "human", base / "run", al_run["data"], stages=HUMAN_STAGES)
    result = run_script("train_al.py", cfg, "query.oracle=human")
    assert result.returncode in (0, 3), result.stderr[-3000:]
    assert (base / "run" / "01_query1" / "annotate" / "manifest.json").is_file()
    return {"config": cfg, "run": base / "run"}


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    """The validation split of a tiny synthetic set: 3 images of 24x32."""
    from datasets import build_source, generate_synthetic

    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    generate_synthetic(root, num_train=1, num_val=3, num_test=1, height=24, width=32, seed=4)
    return build_source("synthetic", root, "val")


@pytest.fixture(scope="module")
def tiny_training(tmp_path_factory):
    """A tiny config, a synthetic training set and a labeled view over it."""
    from datasets import generate_synthetic
    from tests.helpers import write_config

    base = tmp_path_factory.mktemp("trainer")
    data = base / "data"
    generate_synthetic(data, num_train=6, num_val=0, num_test=0, height=32, width=48, seed=2)
    cfg_path = write_config(base, "tiny", base / "run", data)
    return {"base": base, "data": data, "cfg_path": cfg_path}


@pytest.fixture
def city(tmp_path):
    """Three Cityscapes-layout pairs of 40x80 (labelIds only) and a cache folder beside them."""
    from tests.helpers import write_city_pair

    root = tmp_path / "cityscapes"
    paths = [write_city_pair(root, f"aachen_{i:06d}_000019", i) for i in range(3)]
    return root, paths, tmp_path / "cache"


@pytest.fixture
def task_dir(tmp_path):
    """An annotate/ folder as a query stage writes it, for images 'a' and 'b' (48x64)."""
    import numpy as np
    from PIL import Image

    from al.annotate import Task, write_task
    from tests.helpers import TASK_CLASSES, TASK_H, TASK_PALETTE, TASK_W, task_prediction, task_regions

    tasks = []
    for image_id, value in (("a", 60), ("b", 120)):
        image = np.full((TASK_H, TASK_W, 3), value, np.uint8)
        Image.fromarray(image).save(tmp_path / f"{image_id}.png")
        regions, boxes = task_regions(image_id)
        tasks.append(Task(id=image_id, image_path=str(tmp_path / f"{image_id}.png"), image=image, regions=regions,
                          preview=image, boxes=boxes, score={"a": 0.9, "b": 0.4}[image_id],
                          prediction=task_prediction(image_id)))
    return write_task(tmp_path / "annotate", "query1", TASK_CLASSES, tasks, ["a", "b"], np.zeros((2, 3, 4), bool),
                      palette=TASK_PALETTE)


@pytest.fixture(scope="module")
def paper():
    """experiments/paper_results.yaml, read by experiments/run_summaries.py."""
    from experiments.run_summaries import load_paper_results

    return load_paper_results()
