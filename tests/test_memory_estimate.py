"""benchmarks/memory_estimate.py (fake-tensor memory estimate of a training step) agrees with the
memory a real fp32 step takes on the CPU."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed._tools.mem_tracker")  # torch >= 2.5

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_estimate.py"


def test_estimate_matches_a_real_cpu_step():
    out = subprocess.run([sys.executable, str(SCRIPT), "demo", "--check"], capture_output=True, text=True,
                         timeout=600, check=True).stdout
    fp32, bf16 = map(float, re.search(r"fp32 ([\d.]+) GiB .* bf16 autocast ([\d.]+) GiB", out).groups())
    measured, estimated = map(float, re.search(r"by ([\d.]+) GiB; estimated .* ([\d.]+) GiB", out).groups())
    assert abs(estimated - measured) <= 0.15 * measured, out
    assert 0 < bf16 < fp32, out  # autocast keeps conv activations in 16 bits
    assert "fits 16 GB with AMP: yes" in out
