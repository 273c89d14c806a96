"""runtime.amp=auto per kind of card, and the backend switches that go with `deterministic`.
The CUDA decisions are checked on CPU by naming the card's compute capability."""
from __future__ import annotations

import os

import pytest
import torch

from core import precision

CUDA = torch.device("cuda", 0)  # only its .type is read when capability and name are given
CPU = torch.device("cpu")

# (card, compute capability, what `auto` must pick): bf16 units arrived with Ampere (8.0).
CARDS = [("Tesla V100-SXM2-16GB", (7, 0), "fp16"), ("Tesla T4", (7, 5), "fp16"),
         ("NVIDIA A100-SXM4-80GB", (8, 0), "bf16"), ("NVIDIA GeForce RTX 3090", (8, 6), "bf16"),
         ("NVIDIA H100 80GB HBM3", (9, 0), "bf16")]


@pytest.mark.parametrize("card,capability,expected", CARDS)
def test_auto_picks_bf16_only_on_cards_that_compute_it_natively(card, capability, expected):
    mode, reason = precision.resolve_amp("auto", CUDA, capability=capability, name=card)
    assert mode == expected
    assert card in reason and f"{capability[0]}.{capability[1]}" in reason
    assert ("GradScaler" in reason) == (expected == "fp16")


def test_auto_queries_the_card_when_not_told(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    assert precision.resolve_amp("auto", CUDA) == ("fp16", "fp16 with GradScaler: Tesla V100 "
                                                           "(compute capability 7.0) has no native bf16")


def test_explicit_requests_are_honoured_and_emulation_is_said():
    mode, reason = precision.resolve_amp("bf16", CUDA, capability=(7, 0), name="Tesla V100")
    assert mode == "bf16" and "emulated" in reason
    assert precision.resolve_amp("fp16", CUDA, capability=(9, 0), name="H100")[0] == "fp16"
    assert precision.resolve_amp("none", CUDA, capability=(9, 0), name="H100")[0] == "none"
    with pytest.raises(ValueError, match="runtime.amp=fp16 needs CUDA"):
        precision.resolve_amp("fp16", CPU)


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "none")])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    mode, reason = precision.resolve_amp("auto", CPU)
    assert mode == expected and reason.startswith("bf16:" if native else "fp32:")


@pytest.mark.parametrize("flags,expected", [("fpu sse avx2 fma", False), ("avx2 avx512f avx512_bf16", True),
                                            ("avx2 amx_bf16 amx_tile", True)])
def test_cpu_native_bf16_reads_the_cpu_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert precision.cpu_has_native_bf16(str(info)) is expected


@pytest.fixture
def restore_backends():
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:5]
    if saved[5] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[5]


def test_fast_backends_unless_deterministic(restore_backends, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    precision.configure_backends(CUDA, deterministic=False)
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert not torch.are_deterministic_algorithms_enabled()
    precision.configure_backends(CUDA, deterministic=True)
    assert not (torch.backends.cudnn.benchmark or torch.backends.cuda.matmul.allow_tf32
                or torch.backends.cudnn.allow_tf32)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    precision.configure_backends(CPU, deterministic=True)  # CPU: strict, not warn-only
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    precision.configure_backends(CPU, deterministic=False)  # TF32 is a CUDA matter: left off on CPU
    assert torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32


def test_autocast_modes():
    x = torch.randn(2, 3)
    with precision.autocast(CPU, "bf16"):
        assert (x @ x.T).dtype == torch.bfloat16
    with precision.autocast(CPU, "none"):
        assert (x @ x.T).dtype == torch.float32
