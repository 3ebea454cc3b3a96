"""CPU speed of models held in memory (pruned and int8 models included, which AutoModel cannot load):
batch-1 latency and batch-32 throughput, every model timed once per pass in turns, so load on a shared
machine slows them alike; each figure is the median over passes."""
from __future__ import annotations

import statistics

import torch
from torch import nn

from ..heads import encoder_inputs
from ..latency import timed_in_turns


@torch.inference_mode()
def interleaved_speed(models: dict[str, nn.Module], tokenizer, texts: list[str], passes: int = 5,
                      max_len: int = 128, batch_size: int = 32) -> dict[str, dict[str, float]]:
    """{label: latency_ms (batch 1, per example), throughput (examples/s at `batch_size`)} over `texts`."""
    singles = [tokenizer(t, return_tensors="pt", truncation=True, max_length=max_len) for t in texts]
    batches = [tokenizer(texts[i:i + batch_size], return_tensors="pt", truncation=True, max_length=max_len,
                         padding=True) for i in range(0, len(texts), batch_size)]

    def run(model: nn.Module, inputs: list[dict[str, torch.Tensor]]):
        return lambda: [model(**encoder_inputs(batch, model)) for batch in inputs]

    for model in models.values():
        model.eval()
    times = timed_in_turns({(label, kind): run(model, inputs) for label, model in models.items()
                            for kind, inputs in (("single", singles), ("batch", batches))}, passes)
    return {label: {"latency_ms": 1000 * statistics.median(times[label, "single"]) / len(singles),
                    "throughput": len(texts) / statistics.median(times[label, "batch"])} for label in models}
