"""CPU inference time of an encoder over sentence pairs at batch size 1 (DistilBERT's Table 3 measure)."""
from __future__ import annotations

import statistics
import time

import torch
from transformers import AutoModel, AutoTokenizer


@torch.inference_mode()
def time_full_pass(path: str, pairs: list[tuple[str, str]], repeats: int = 3) -> dict:
    """Median over `repeats` full passes (one pass is noisy on a shared CPU)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    encoded = [tokenizer(a, b, return_tensors="pt", truncation=True, max_length=128) for a, b in pairs]
    for batch in encoded[:5]:  # warm-up
        model(**batch)
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for batch in encoded:
            model(**batch)
        passes.append(time.perf_counter() - t0)
    seconds = statistics.median(passes)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "seconds": seconds,
            "ms_per_pair": 1000 * seconds / len(encoded), "passes": [round(x, 2) for x in passes]}
