"""Mixed precision: whether a run autocasts, and in which dtype.

bf16 autocast pays off on a CPU only where the hardware multiplies bf16 matrices natively
(AVX512-BF16, AMX); elsewhere oneDNN emulates it and a step runs slower than in float32 (on
this project's AVX2 machine a 2048² bf16 matmul runs at under 1 GFLOP/s against 109 in fp32).
"""
from __future__ import annotations

import contextlib
import platform
import warnings

import torch

X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private


def cpu_emulates_bf16() -> bool:
    """Whether this is an x86 CPU without AVX512-BF16 or AMX, where autocast emulates bf16 matrix
    products and runs slower than float32. Other architectures, and torch builds without the
    probes, are not judged."""
    probes = [getattr(torch.cpu, name, None) for name in BF16_PROBES]
    if platform.machine().lower() not in X86_MACHINES or None in probes:
        return False
    return not any(probe() for probe in probes)


def resolve_amp(*, amp: bool | None, amp_dtype: str, device: torch.device, warn: bool) -> bool:
    """``train.amp`` made definite (unset: on for CUDA), checked against the device, with a warning
    (``warn``: the main process) where the CPU would emulate bf16."""
    enabled = amp if amp is not None else device.type == "cuda"
    if enabled and amp_dtype == "fp16" and device.type != "cuda":
        raise ValueError("train.amp_dtype=fp16 needs CUDA; use bf16 on CPU")
    if enabled and device.type == "cpu" and warn and cpu_emulates_bf16():
        warnings.warn("train.amp=true on a CPU without AVX512-BF16 or AMX: bf16 autocast is emulated "
                      "there and slower than float32; set train.amp=false", stacklevel=3)
    return enabled


def autocast_context(device: torch.device, *, enabled: bool, dtype: str):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)
