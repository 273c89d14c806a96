"""Small conventions a person meets first: Ctrl-C says where the run resumes, log.txt starts with
the command, versions and commit, --help keeps the examples' lines, mAcc beside mIoU."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO, write_config


def test_mean_class_accuracy_against_a_hand_count():
    from engine.evaluation import mean_class_accuracy
    # rows = true class, columns = predicted: class 0 right 3 of 4, class 1 right 1 of 2, class 2 absent
    conf = np.array([[3, 1, 0], [1, 1, 0], [0, 5, 0]])
    conf[2] = 0
    assert mean_class_accuracy(conf) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_help_keeps_the_usage_examples_on_their_own_lines():
    out = subprocess.run([sys.executable, "train_al.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120).stdout
    lines = out.splitlines()
    assert any(line.strip() == "python train_al.py --config table1/camvid/row5 [key.sub=value ...]" for line in lines)
    assert any(line.strip() == "torchrun --nproc_per_node 4 train_al.py --config table1/camvid/row5" for line in lines)


@pytest.mark.slow
def test_ctrl_c_prints_one_line_naming_the_checkpoint_and_log_starts_with_provenance(al_run, tmp_path):
    cfg = write_config(tmp_path, "ctrl_c", tmp_path / "run", al_run["data"])
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("S4AL_DIE_AT", None)
    proc = subprocess.Popen([sys.executable, "train_al.py", "--config", str(cfg), "stages.teacher.epochs=40"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = tmp_path / "run" / "00_teacher" / "checkpoints"
    deadline = time.time() + 240
    while not list(checkpoints.glob("step_*.pth")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint's writer finish
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    newest = max(checkpoints.glob("step_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    assert last.startswith("interrupted: run the same command again to resume 00_teacher from ")
    assert str(newest) in last
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert "command: " in log[0] and "train_al.py --config" in log[0] and "stages.teacher.epochs=40" in log[0]
    assert "versions: python" in log[1] and "torch" in log[1]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert f"git commit: {commit}" in log[2]


def test_summarize_draws_one_labelled_curve_per_run_with_its_random_twin(tmp_path):
    from datasets.decode import read_rgb
    from experiments.run_summaries import Run
    from experiments.summarize import labelled_curves

    def run(name, points):
        stages = [{"name": f"s{i}", "labeled_pixel_pct": x, "miou": y} for i, (x, y) in enumerate(points)]
        return Run(config=name, run_dir=tmp_path / name, finished=True, device="cpu", stages=stages)
    runs = {"my_photos": [run("my_photos", [(10, 30), (15, 36), (20, 41)])],
            "my_photos_random": [run("my_photos_random", [(10, 30), (15, 33), (20, 37)])],
            "alone": [run("alone", [(5, 20), (8, 25)])]}
    section = labelled_curves(runs, tmp_path / "curves")
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == ["alone.png", "my_photos.png"]
    assert "`my_photos`" in section and "`alone`" in section and "my_photos_random`" not in section

    def has_colour(path, rgb):  # matplotlib's first two line colours: blue, then orange
        return bool((np.abs(read_rgb(path).astype(int) - rgb).sum(axis=2) < 30).any())
    blue, orange = (31, 119, 180), (255, 127, 14)
    assert has_colour(tmp_path / "curves" / "my_photos.png", blue) and has_colour(tmp_path / "curves" / "my_photos.png", orange)
    assert has_colour(tmp_path / "curves" / "alone.png", blue) and not has_colour(tmp_path / "curves" / "alone.png", orange)


def test_the_query_figure_holds_the_panel_enlarged_under_its_titles():
    from engine.figures import enlarge, query_figure
    from query.pool import RegionGrid
    from query.visualize import query_panel
    grid = RegionGrid(48, 64, (16, 16))
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    new = np.zeros(grid.shape, bool)
    new[1, 2] = True
    panel = query_panel(image, np.full((48, 64), 0.5), grid, np.zeros(grid.shape, bool), new, score_max=1.0)
    figure, big = query_figure(panel, 1.0, "per-pixel entropy", "entropy (nats)"), enlarge(panel)
    assert big.shape[0] >= 360 and big.shape[0] % 48 == 0
    np.testing.assert_array_equal(big[::big.shape[0] // 48, ::big.shape[0] // 48], panel)  # nearest, integer factor
    half = big.shape[1] // 2
    np.testing.assert_array_equal(figure[30:30 + big.shape[0], :half], big[:, :half])     # image column under its title
    np.testing.assert_array_equal(figure[30:30 + big.shape[0], half + 6:2 * half + 6], big[:, half:])  # entropy column
    assert figure.shape[0] > 30 + big.shape[0] + 40  # legend and colour bar below
