"""Shared by the step benchmarks: a fixed masked-LM batch (random ids, 15% masked)."""
from __future__ import annotations

import torch


def make_mlm_batch(batch: int, seq: int, vocab: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    masked = torch.rand(batch, seq, generator=g) < 0.15
    labels[masked] = ids[masked]
    ids[masked] = 103
    return {k: v.to(device) for k, v in
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}.items()}
