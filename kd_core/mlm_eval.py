"""Masked-token accuracy and MLM loss of masked LMs on held-out rows, with the same masks for every model.

python -m kd_core.mlm_eval --model DIR [DIR ...] --corpus PREPARED_DIR [--split valid] [--batches 20]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.nn import functional as F
from transformers import AutoTokenizer

from .cli import exit_code_of
from .data import MaskingCollator, MaskingConfig, open_corpus
from .errors import UserError
from .heads import IGNORE_INDEX, encoder_inputs, mlm_logits_at
from .student import load_masked_lm


@torch.no_grad()
def masked_lm_scores(model, rows, collate, batches: int = 20, batch_size: int = 32, seed: int = 0) -> dict:
    """Accuracy of the top-1 prediction and mean cross-entropy at masked positions, over the first
    `batches` x `batch_size` rows (all of a smaller split)."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    n_rows = min(batches * batch_size, len(rows))
    for b, start in enumerate(range(0, n_rows, batch_size)):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, n_rows))],
                        torch.Generator().manual_seed(seed + b))
        hidden = model.base_model(**encoder_inputs(batch, model.base_model)).last_hidden_state
        masked = batch["labels"] != IGNORE_INDEX
        logits = mlm_logits_at(model, hidden, masked).float()
        labels = batch["labels"][masked]
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
    if total == 0:  # an accuracy of 0 over nothing would read as a result
        raise UserError(f"no masked tokens to score in {len(rows)} rows (--batches {batches}): give more rows or batches")
    return {"masked_accuracy": correct / total, "mlm_loss": loss_sum / total, "masked_tokens": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_core.mlm_eval")
    parser.add_argument("--model", nargs="+", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    def score(path: str) -> None:
        model = load_masked_lm(path)  # first: a missing or incomplete model is one error line
        tokenizer = AutoTokenizer.from_pretrained(path)
        rows = open_corpus(args.corpus, tokenizer, args.split)
        collate = MaskingCollator.from_tokenizer(MaskingConfig(whole_word=False), tokenizer)
        print(json.dumps({path: masked_lm_scores(model, rows, collate, args.batches, args.batch_size)}), flush=True)
    return exit_code_of(lambda: [score(path) for path in args.model])


if __name__ == "__main__":
    sys.exit(main())
