"""`train.mixed_precision: auto`: bf16 autocast where the hardware multiplies bf16 faster than fp32, fp32 elsewhere.

On a CPU that means AMX (Intel), or AVX512-BF16 on AMD (Zen 4 on: ~470 vs ~130 GFLOP/s for the vocabulary
matmul on 2 EPYC cores). On Intel cores AVX512-BF16 alone issues bf16 dot products no faster than fp32 FMAs,
and the casts come on top: measured on 2 Xeon (Emerald Rapids, KVM without AMX) cores, the same matmul ran at
0.79x of fp32 and a bert_kd step at 0.75x (0.82x with teacher_half; results/bench_bert_kd_step.json). Without
either, oneDNN emulates bf16. Weights, optimizer state and losses stay fp32 either way.
"""
from __future__ import annotations

from pathlib import Path

import torch


def cpu_info() -> tuple[str, set[str]]:
    """(vendor id, feature flags) of the CPU from Linux /proc/cpuinfo; ("", set()) elsewhere, which means fp32."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "", set()
    field = lambda name: next((line.split(":", 1)[1].strip() for line in lines if line.startswith(name)), "")
    return field("vendor_id"), set(field("flags").split())


def fast_cpu_bf16(vendor: str, flags: set[str]) -> str | None:
    """The feature that makes bf16 matmuls faster than fp32 on this CPU, or None."""
    if "amx_bf16" in flags:
        return "amx_bf16"
    if "avx512_bf16" in flags and vendor == "AuthenticAMD":
        return "avx512_bf16 on AMD"
    return None


def resolve(requested: str, device_type: str) -> tuple[str, str]:
    """(precision accelerate runs, why) for a train.mixed_precision value; only `auto` is decided here."""
    if requested != "auto":
        return requested, "as configured"
    if device_type == "cuda":
        return ("bf16", "auto: the GPU supports bf16") if torch.cuda.is_bf16_supported() else (
            "no", "auto: the GPU has no bf16")
    vendor, flags = cpu_info()
    feature = fast_cpu_bf16(vendor, flags)
    if feature:
        return "bf16", f"auto: this CPU multiplies bf16 faster than fp32 ({feature})"
    return "no", (f"auto: fp32, as this CPU ({vendor or 'unknown'}) has neither AMX nor AMD's AVX512-BF16, "
                  "so bf16 would not be faster")
