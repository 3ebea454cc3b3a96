"""CPU inference time of encoders over sentence pairs at batch size 1 (DistilBERT's Table 3 measure).

Models are measured in turns: each pass times every model once over all pairs, so a machine that gets
busier or quieter during the measurement slows every model alike; each model's time is the median of
its passes, and its ratio to the first model (the teacher) is the median of the per-pass ratios.
"""
from __future__ import annotations

import statistics
import time

import torch
from transformers import AutoModel, AutoTokenizer


def timed_in_turns(work: dict, passes: int) -> dict:
    """{key: [seconds of each pass]}: every pass calls each `work[key]()` once, in turns, after one warm-up call."""
    for run in work.values():  # first calls allocate and pick kernels
        run()
    times: dict = {key: [] for key in work}
    for _ in range(passes):
        for key, run in work.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return times


@torch.inference_mode()
def interleaved_latency(paths: dict[str, str], pairs: list[tuple[str, str | None]], passes: int = 5) -> dict[str, dict]:
    """{label: params_m, seconds (median pass), ms_per_pair, passes (s), speedup (first model's pass time /
    this model's, median over passes)} for each model directory or hub name in `paths`."""
    models = {}
    for label, path in paths.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        encoded = [tokenizer(a, b, return_tensors="pt", truncation=True, max_length=128) for a, b in pairs]
        models[label] = (model, encoded)
    times = timed_in_turns({label: lambda m=model, e=encoded: [m(**batch) for batch in e]
                            for label, (model, encoded) in models.items()}, passes)
    first = next(iter(times.values()))
    out = {}
    for label, (model, encoded) in models.items():
        seconds = statistics.median(times[label])
        out[label] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "seconds": seconds,
                      "ms_per_pair": 1000 * seconds / len(encoded), "passes": [round(x, 3) for x in times[label]],
                      "speedup": statistics.median(f / t for f, t in zip(first, times[label]))}
    return out
