"""Intrinsic measures of masked LMs and ELECTRA discriminators on held-out rows, with the same masks for every
model, next to the baselines that say what the numbers are worth:

- MLM: mean cross-entropy (nats) and top-1 accuracy at the masked positions, and the same two numbers for the
  unigram model of the corpus's training split at the same positions (`unigram_log_probs`);
- RTD: the discriminator's binary cross-entropy over every non-pad token of the generator-corrupted input, the
  constant predictor's at the same replacement rate (`constant_rtd_loss`), ROC AUC, and the generator's own MLM
  loss and top-1 at the masked positions.

python -m kd_core.mlm_eval --model DIR [DIR ...] --corpus PREPARED_DIR [--split valid] [--batches 20]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import AutoTokenizer

from .cli import exit_code_of
from .data import MaskingCollator, MaskingConfig, open_corpus
from .errors import UserError
from .heads import IGNORE_INDEX, encoder_inputs, mlm_logits_at
from .student import load_masked_lm

UNIGRAM_ALPHA = 0.5  # add-alpha smoothing of the unigram counts (every non-special token gets some mass)


def unigram_log_probs(token_counts: np.ndarray, special_ids: list[int], alpha: float = UNIGRAM_ALPHA) -> torch.Tensor:
    """log p(token) of the add-alpha unigram model of `token_counts` over the non-special tokens (special tokens,
    never a masked target, get -inf). The MLM teacher's decoder bias starts from it; it is also the baseline."""
    counts = np.asarray(token_counts, dtype=np.float64) + alpha
    counts[list(special_ids)] = 0.0
    with np.errstate(divide="ignore"):
        return torch.from_numpy(np.log(counts / counts.sum())).float()


def corpus_unigram(corpus: str | Path, tokenizer) -> torch.Tensor:
    """The unigram model of a prepared corpus's training split (token_counts.npy), in the tokenizer's vocabulary."""
    counts = np.load(Path(corpus) / "token_counts.npy")
    return unigram_log_probs(counts[:len(tokenizer)], tokenizer.all_special_ids)


def constant_rtd_loss(replaced_rate: float) -> float:
    """Binary cross-entropy (nats) of the best constant predictor, p(replaced) = the replacement rate r:
    -(r log r + (1 - r) log(1 - r)), the entropy of the labels."""
    r = float(replaced_rate)
    if r <= 0.0 or r >= 1.0:
        return 0.0
    return -(r * math.log(r) + (1 - r) * math.log(1 - r))


def _batches(rows, collate, batches: int | None, batch_size: int, seed: int):
    """The first `batches` x `batch_size` rows in order (None: all), the last batch partial, masks seeded per batch."""
    n_rows = len(rows) if batches is None else min(batches * batch_size, len(rows))
    for b, start in enumerate(range(0, n_rows, batch_size)):
        yield collate([rows[i] for i in range(start, min(start + batch_size, n_rows))],
                      torch.Generator().manual_seed(seed + b))


@torch.no_grad()
def masked_lm_scores(model, rows, collate, batches: int | None = 20, batch_size: int = 32, seed: int = 0,
                     unigram: torch.Tensor | None = None) -> dict:
    """Accuracy of the top-1 prediction and mean cross-entropy at masked positions over the first `batches` x
    `batch_size` rows (batches=None, or a smaller split: every row); with `unigram` (log-probs over the
    vocabulary), the unigram model's at the same positions."""
    model.eval()
    correct = total = uni_correct = 0
    loss_sum = uni_sum = 0.0
    uni_top = int(unigram.argmax()) if unigram is not None else None
    for batch in _batches(rows, collate, batches, batch_size, seed):
        hidden = model.base_model(**encoder_inputs(batch, model.base_model)).last_hidden_state
        masked = batch["labels"] != IGNORE_INDEX
        logits = mlm_logits_at(model, hidden, masked).float()
        labels = batch["labels"][masked]
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        if unigram is not None:
            uni_sum += float(-unigram[labels].double().sum())
            uni_correct += int((labels == uni_top).sum())
    if total == 0:  # an accuracy of 0 over nothing would read as a result
        raise UserError(f"no masked tokens to score in {len(rows)} rows (--batches {batches}): give more rows or batches")
    out = {"masked_accuracy": correct / total, "mlm_loss": loss_sum / total, "masked_tokens": total}
    if unigram is not None:
        out.update(unigram_loss=uni_sum / total, unigram_accuracy=uni_correct / total)
    return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN with one class only."""
    from scipy.stats import rankdata

    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def rtd_scores(discriminator, generator, rows, collate, batches: int | None = 20, batch_size: int = 32,
               seed: int = 0, temperature: float = 1.0) -> dict:
    """The discriminator's held-out RTD loss over non-pad tokens next to the constant predictor's at the same
    replacement rate, its ROC AUC, and the generator's MLM loss / top-1 at the masked positions. The generator's
    samples are seeded per batch, so every discriminator sees the same corrupted text."""
    from electra_kd.rtd import corrupt

    discriminator.eval()
    generator.eval()
    scores, labels = [], []
    gen_loss = gen_correct = gen_total = 0.0
    for b, batch in enumerate(_batches(rows, collate, batches, batch_size, seed)):
        masked = batch["labels"] != IGNORE_INDEX
        hidden = generator.base_model(**encoder_inputs(batch, generator.base_model)).last_hidden_state
        logits = mlm_logits_at(generator, hidden, masked).float()
        targets = batch["labels"][masked]
        gen_loss += float(F.cross_entropy(logits, targets, reduction="sum"))
        gen_correct += int((logits.argmax(-1) == targets).sum())
        gen_total += len(targets)
        torch.manual_seed(seed + b)
        corrupted, _ = corrupt(generator, batch, temperature)
        tokens = corrupted["attention_mask"].bool()
        out = discriminator.base_model(**encoder_inputs(corrupted, discriminator.base_model)).last_hidden_state
        s = discriminator.discriminator_predictions(out).float()
        scores.append(s[tokens])
        labels.append(corrupted["rtd_labels"][tokens])
    s, y = torch.cat(scores), torch.cat(labels)
    rate = float(y.mean())
    loss = float(F.binary_cross_entropy_with_logits(s, y))
    return {"rtd_loss": loss, "constant_rtd_loss": constant_rtd_loss(rate), "replaced_rate": rate,
            "rtd_auc": roc_auc(s.numpy(), y.numpy()), "rtd_accuracy": float(((s > 0).float() == y).float().mean()),
            "tokens": int(len(y)), "generator_mlm_loss": gen_loss / max(gen_total, 1),
            "generator_masked_accuracy": gen_correct / max(gen_total, 1), "masked_tokens": int(gen_total)}


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
        print(json.dumps({path: masked_lm_scores(model, rows, collate, args.batches, args.batch_size,
                                                 unigram=corpus_unigram(args.corpus, tokenizer))}), flush=True)
    return exit_code_of(lambda: [score(path) for path in args.model])


if __name__ == "__main__":
    sys.exit(main())
