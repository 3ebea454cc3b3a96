"""ELECTRA's replaced-token detection (RTD) corruption: generator samples replace masked tokens.

1. The masking collator masks ~15% of tokens (ELECTRA replaces 85% of them by [MASK] and keeps 15%).
2. The generator (a small masked LM) predicts the masked tokens; replacements are sampled from its
   output distribution (softmax(logits / T) via the Gumbel-max trick, which equals multinomial sampling).
3. The corrupted input is the original with the samples at masked positions. A token is labelled
   "replaced" (1) only where the sample differs from the original: a correct guess counts as original.
"""
from __future__ import annotations

import torch
from torch import nn

from kd_core.heads import IGNORE_INDEX, encoder_inputs, mlm_logits_at


def gumbel_sample(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One sample per row from softmax(logits / temperature); temperature 0 is argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand_like(logits, dtype=torch.float32).clamp_(1e-9, 1.0 - 1e-9)
    return (logits.float() / temperature - torch.log(-torch.log(u))).argmax(-1)


def rtd_labels(original: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """1.0 where the token was replaced by something different, else 0.0."""
    return (corrupted != original).float()


def corrupt(generator: nn.Module, batch: dict[str, torch.Tensor], temperature: float = 1.0,
            with_loss: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The corrupted batch (input_ids replaced, `rtd_labels` added) and, if asked, the generator's MLM loss.

    batch: from the masking collator (input_ids with [MASK]s, labels = original ids at masked
    positions, -100 elsewhere). Gradients flow into the generator only through its MLM loss."""
    masked = batch["labels"] != IGNORE_INDEX
    hidden = generator.base_model(**encoder_inputs(batch, generator.base_model)).last_hidden_state
    logits = mlm_logits_at(generator, hidden, masked)
    loss = nn.functional.cross_entropy(logits.float(), batch["labels"][masked]) if with_loss else None
    original = torch.where(masked, batch["labels"], batch["input_ids"])
    corrupted = original.clone()
    with torch.no_grad():
        corrupted[masked] = gumbel_sample(logits.detach(), temperature)
    out = {k: v for k, v in batch.items() if k != "labels"}
    out["input_ids"] = corrupted
    out["rtd_labels"] = rtd_labels(original, corrupted)
    return out, loss
