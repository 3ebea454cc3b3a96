"""`train.mixed_precision: auto`: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

On a CPU, bf16 pays only with native bf16 dot products (AVX512-BF16 or AMX); without them oneDNN emulates
bf16 and it is slower than fp32. Weights, optimizer state and losses stay fp32 either way.
"""
from __future__ import annotations

from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere, which means fp32)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


def resolve(requested: str, device_type: str) -> tuple[str, str]:
    """(precision accelerate runs, why) for a train.mixed_precision value; only `auto` is decided here."""
    if requested != "auto":
        return requested, "as configured"
    if device_type == "cuda":
        return ("bf16", "auto: the GPU supports bf16") if torch.cuda.is_bf16_supported() else (
            "no", "auto: the GPU has no bf16")
    native = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
    if native:
        return "bf16", f"auto: the CPU computes bf16 natively ({', '.join(native)})"
    return "no", f"auto: the CPU has none of {', '.join(CPU_BF16_FLAGS)}, so fp32"
