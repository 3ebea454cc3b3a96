"""CPU speed of models held in memory (pruned and int8 models included, which AutoModel cannot load):
batch-1 latency and batch-32 throughput, every model timed once per pass in turns, so load on a shared
machine slows them alike; each figure is the median over passes."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..heads import encoder_inputs


def _seconds(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        model(**encoder_inputs(batch, model))
    return time.perf_counter() - t0


@torch.inference_mode()
def interleaved_speed(models: dict[str, nn.Module], tokenizer, texts: list[str], passes: int = 5,
                      max_len: int = 128, batch_size: int = 32) -> dict[str, dict[str, float]]:
    """{label: latency_ms (batch 1, per example), throughput (examples/s at `batch_size`)} over `texts`."""
    singles = [tokenizer(t, return_tensors="pt", truncation=True, max_length=max_len) for t in texts]
    batches = [tokenizer(texts[i:i + batch_size], return_tensors="pt", truncation=True, max_length=max_len,
                         padding=True) for i in range(0, len(texts), batch_size)]
    times: dict[str, dict[str, list[float]]] = {label: {"single": [], "batch": []} for label in models}
    for model in models.values():  # warm-up: first calls allocate and pick kernels
        model.eval()
        _seconds(model, singles[:3] + batches[:1])
    for _ in range(passes):
        for label, model in models.items():
            times[label]["single"].append(_seconds(model, singles))
            times[label]["batch"].append(_seconds(model, batches))
    return {label: {"latency_ms": 1000 * statistics.median(t["single"]) / len(singles),
                    "throughput": len(texts) / statistics.median(t["batch"])} for label, t in times.items()}
