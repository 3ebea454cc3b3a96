"""Shared by the step benchmarks: a fixed masked-LM batch, rows timed interleaved, the machine's matmul
rates, and what a result must record about the machine it ran on."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from kd_core.precision import cpu_info, resolve
from kd_core.provenance import commit

ROOT = Path(__file__).resolve().parents[1]
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def make_mlm_batch(batch: int, seq: int, vocab: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    masked = torch.rand(batch, seq, generator=g) < 0.15
    labels[masked] = ids[masked]
    ids[masked] = 103
    return {k: v.to(device) for k, v in
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}.items()}


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def machine() -> dict:
    """CPU model and flags, what `auto` precision picks, threads, torch, commit (with a dirty mark), and the load
    when it started."""
    vendor, flags = cpu_info()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return {"commit": commit() + ("+dirty" if dirty else ""),
            "cpu_vendor": vendor, "cpu_model": model, "cpu_flags": sorted(set(FLAGS_OF_INTEREST) & flags),
            "auto_precision_on_cpu": resolve("auto", "cpu"), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "loadavg_start": loadavg()}


def matmul_row(dtype: torch.dtype, m: int = 2048, k: int = 384, n: int = 30522) -> tuple[Callable[[], None], float]:
    """(one [m x k] @ [k x n] product in `dtype`, its FLOPs): the machine's rate for the vocabulary matmul."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
    return (lambda: torch.nn.functional.linear(x, w)), 2.0 * m * k * n


def interleaved(rows: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, dict]:
    """Each row once per round, rounds in turn: a load that drifts (other jobs on the machine) hits every row
    alike, so ratios between rows hold even when the absolute times move. Wall and CPU seconds per call."""
    for fn in rows.values():
        for _ in range(warmup):
            fn()
    times = {name: {"wall": [], "cpu": []} for name in rows}
    for _ in range(rounds):
        for name, fn in rows.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - c0)
            times[name]["wall"].append(time.perf_counter() - w0)
    return {name: {"median_wall_s": statistics.median(t["wall"]), "median_cpu_s": statistics.median(t["cpu"]),
                   "wall_s": [round(v, 4) for v in t["wall"]]} for name, t in times.items()}
