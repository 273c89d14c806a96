"""benchmarks/memory_estimate.py (fake-tensor memory estimate of a training step): its figures, and
their agreement with the memory a real fp32 step takes on this machine's CPU."""
import os
import platform
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytest.importorskip("torch.distributed._tools.mem_tracker")  # torch >= 2.5

SCRIPT = REPO / "benchmarks" / "memory_estimate.py"
# --check reads /proc/self/statm and relies on glibc's MALLOC_MMAP_THRESHOLD_ returning freed
# blocks to the OS at once; elsewhere the resident set says little about the step.
CAN_MEASURE = sys.platform == "linux" and platform.libc_ver()[0] == "glibc" and os.path.exists("/proc/self/statm")


@pytest.fixture(scope="module")
def demo_output():
    args = [sys.executable, str(SCRIPT), "demo"] + (["--check"] if CAN_MEASURE else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=True).stdout


def test_bf16_estimate_is_below_fp32_and_fits(demo_output):
    fp32, bf16 = map(float, re.search(r"fp32 ([\d.]+) GiB .* bf16 autocast ([\d.]+) GiB", demo_output).groups())
    assert 0 < bf16 < fp32, demo_output  # autocast keeps conv activations in 16 bits
    assert "fits 16 GB with AMP: yes" in demo_output


@pytest.mark.env_dependent
@pytest.mark.skipif(not CAN_MEASURE, reason="needs Linux with glibc to measure a step's resident memory")
def test_estimate_matches_a_real_cpu_step(demo_output):
    # Resident memory also holds whatever the allocator and threads keep around: 15% leaves room
    # for that (measured: -2.8% on glibc 2.36, 2 CPU cores).
    measured, estimated = map(float, re.search(r"by ([\d.]+) GiB; estimated .* ([\d.]+) GiB", demo_output).groups())
    assert abs(estimated - measured) <= 0.15 * measured, demo_output
