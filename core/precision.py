"""Numeric precision and backend switches: which autocast dtype a run uses (`runtime.amp`), and
the cuDNN / TF32 / determinism settings that go with `deterministic`.

`runtime.amp: auto` picks, per device:
  CUDA, compute capability >= 8.0 (A100, H100, RTX 30xx/40xx)  bf16 autocast (native bf16 units)
  CUDA, compute capability  < 8.0 (V100 -- the paper's card, T4)  fp16 autocast + GradScaler: these
      cards have no bf16 units, torch emulates bf16 there and it is slower than fp32
  CPU with AMX or AVX512-BF16                                       bf16 autocast
  any other CPU                                                     fp32 (bf16 is emulated, 5-20x slower)
An explicit `bf16` / `fp16` / `none` is honoured as asked (fp16 on CPU is refused), and the
returned reason says when the request runs emulated.
"""
from __future__ import annotations

import contextlib
import os

import torch

# Ampere introduced bf16 tensor cores; earlier cards only emulate bf16 arithmetic.
NATIVE_BF16_CAPABILITY = (8, 0)


def autocast(device: torch.device, amp: str):
    """The autocast context for a resolved amp mode ('none', 'bf16' or 'fp16')."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """AMX or AVX512-BF16: where bf16 autocast makes a CPU step ~2x faster. Without them
    (e.g. AVX2-only CPUs) bf16 is emulated and 5-20x *slower* than fp32 (measured: DeepLabv3+
    MobileNetV2 forward 0.3 s fp32 vs 14 s bf16 on a 2-core AVX2 EPYC)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False  # not Linux: no way to tell, so do not assume the fast path
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _cuda_card(device: torch.device, capability, name) -> tuple[tuple[int, int], str]:
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if name is None:
        name = torch.cuda.get_device_name(device)
    return tuple(capability), name


def resolve_amp(requested: str, device: torch.device, *, capability: tuple[int, int] | None = None,
                name: str | None = None) -> tuple[str, str]:
    """(mode, reason): mode is 'none', 'bf16' or 'fp16'; reason is one sentence for the log.

    `capability` / `name` describe the CUDA card; they are queried from `device` when not given
    (given in tests, to check the decision for cards this machine does not have)."""
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("runtime.amp=fp16 needs CUDA; on CPU use runtime.amp=bf16 or none")
    if requested == "none":
        return "none", "fp32: runtime.amp=none"
    if device.type == "cuda":
        (major, minor), card = _cuda_card(device, capability, name)
        native = (major, minor) >= NATIVE_BF16_CAPABILITY
        where = f"{card} (compute capability {major}.{minor})"
        if requested == "fp16":
            return "fp16", f"fp16 with GradScaler: runtime.amp=fp16 on {where}"
        if requested == "bf16":
            note = "computes bf16 natively" if native else "has no native bf16: it is emulated and slow"
            return "bf16", f"bf16: runtime.amp=bf16; {where} {note}"
        if native:
            return "bf16", f"bf16: {where} computes bf16 natively"
        return "fp16", f"fp16 with GradScaler: {where} has no native bf16"
    native = cpu_has_native_bf16()
    if requested == "bf16":
        note = "has AMX/AVX512-BF16" if native else "has no AMX/AVX512-BF16: bf16 is emulated and 5-20x slower"
        return "bf16", f"bf16: runtime.amp=bf16; this CPU {note}"
    if native:
        return "bf16", "bf16: this CPU has AMX/AVX512-BF16"
    return "none", "fp32: this CPU has no AMX/AVX512-BF16 (emulated bf16 would be 5-20x slower)"


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Process-wide kernel choices. Deterministic: deterministic algorithms, no cuDNN autotuning,
    no TF32 (CPU fp32 runs are then bit-reproducible). Otherwise: cuDNN picks the fastest
    convolution for each shape (`benchmark`), and on CUDA fp32 matmuls/convolutions may use TF32
    tensor cores (10-bit mantissa inputs, fp32 accumulation: the usual training trade-off)."""
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; an explicit environment value wins.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Some CUDA kernels (bilinear upsampling's backward) have no deterministic version: on
        # CUDA torch warns about them instead of stopping the run.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
