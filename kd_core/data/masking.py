"""Dynamic masking, applied per batch: masks differ every epoch, and are seeded by the batch position.

Selection is per unit: a unit is a token, or with whole-word masking a whole word (a word-start
token and its continuation pieces), so a word is masked entirely or not at all. Special tokens
and padding are never selected.
- uniform: each unit is selected with probability `mask_prob` (BERT);
- smoothed (`smoothing` > 0, HF Distil*'s mlm_smoothing): exactly round(mask_prob * units) units
  are drawn without replacement with probability proportional to count(token) ** -smoothing,
  so frequent tokens are masked less often.
Each selected token becomes [MASK], a random non-special token, or stays, with probabilities
`replace` = (mask, random, keep): (0.8, 0.1, 0.1) for BERT, (0.85, 0.15, 0.0) as in ELECTRA.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import out_of_range
from ..errors import UserError
from ..heads import IGNORE_INDEX
from .pack import word_start_table


@dataclass
class MaskingConfig:
    mask_prob: float = 0.15
    replace: tuple[float, float, float] = (0.8, 0.1, 0.1)  # [MASK], random token, unchanged
    whole_word: bool = True
    smoothing: float = 0.0  # 0.7 in HF Distil*; needs token counts
    pad_to_multiple_of: int = 8

    def problems(self) -> list[str]:
        return out_of_range([
            (not 0 < self.mask_prob <= 1, f"mask_prob={self.mask_prob}: give a share in (0, 1]"),
            (len(self.replace) != 3 or not all(p >= 0 for p in self.replace) or abs(sum(self.replace) - 1) > 1e-6,
             f"replace={self.replace}: give three shares >= 0 (mask, random, keep) that sum to 1"),
            (not 0 <= self.smoothing <= 1, f"smoothing={self.smoothing}: give a value in [0, 1]"),
            (not self.pad_to_multiple_of >= 1, f"pad_to_multiple_of={self.pad_to_multiple_of}: give 1 or more"),
        ])


def pad_rows(rows: list[torch.Tensor], pad_id: int, multiple: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row, rounded up to `multiple`: (input_ids, attention_mask)."""
    longest = max(len(r) for r in rows)
    width = -(-longest // multiple) * multiple if multiple > 1 else longest
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        attention[i, :len(r)] = 1
    return ids, attention


class MaskingCollator:
    """collate(rows, generator) -> input_ids, attention_mask, labels (-100 where not masked)."""

    def __init__(self, cfg: MaskingConfig, pad_id: int, mask_id: int, special_ids: list[int],
                 word_start: np.ndarray, token_counts: np.ndarray | None = None):
        if abs(sum(cfg.replace) - 1) > 1e-6:
            raise UserError(f"masking.replace={cfg.replace} must sum to 1 (mask, random, keep); "
                            "e.g. [0.8, 0.1, 0.1] as in BERT")
        if not 0 < cfg.mask_prob < 1:
            raise UserError(f"masking.mask_prob={cfg.mask_prob} must be in (0, 1); BERT uses 0.15")
        self.cfg, self.pad_id, self.mask_id = cfg, pad_id, mask_id
        vocab = len(word_start)
        self.special = torch.zeros(vocab, dtype=torch.bool)
        self.special[special_ids] = True
        self.word_start = torch.from_numpy(word_start) if cfg.whole_word else torch.ones(vocab, dtype=torch.bool)
        self.random_pool = torch.nonzero(~self.special).squeeze(1)
        self.unit_weight = None
        if cfg.smoothing > 0:
            if token_counts is None:
                raise ValueError("masking.smoothing > 0 needs token counts (stats of the prepared corpus)")
            self.unit_weight = torch.from_numpy(np.maximum(token_counts[:vocab], 1).astype(np.float64)
                                                ** -cfg.smoothing)

    @classmethod
    def for_corpus(cls, cfg: MaskingConfig, tokenizer, corpus_dir: str | Path):
        """The collator for a prepared corpus: smoothing uses the corpus's own token counts."""
        counts = np.load(Path(corpus_dir) / "token_counts.npy") if cfg.smoothing > 0 else None
        return cls.from_tokenizer(cfg, tokenizer, counts)

    @classmethod
    def from_tokenizer(cls, cfg: MaskingConfig, tokenizer, token_counts: np.ndarray | None = None):
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise UserError(f"tokenizer '{tokenizer.name_or_path}' has no mask or pad token; MLM needs both")
        return cls(cfg, tokenizer.pad_token_id, tokenizer.mask_token_id, list(tokenizer.all_special_ids),
                   word_start_table(tokenizer), token_counts)

    def select(self, ids: torch.Tensor, attention: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """bool (batch, seq): the positions to predict."""
        maskable = attention.bool() & ~self.special[ids]
        starts = maskable & self.word_start[ids]
        # continuation pieces follow their word start's decision (a piece after a special token starts a unit)
        starts |= maskable & ~torch.roll(maskable, 1, dims=1)
        if self.unit_weight is None:
            chosen_starts = starts & (torch.rand(ids.shape, generator=g) < self.cfg.mask_prob)
        else:
            weights = torch.where(starts, self.unit_weight[ids], torch.zeros((), dtype=torch.float64)).flatten()
            n = int(round(self.cfg.mask_prob * int(starts.sum())))
            chosen_starts = torch.zeros(ids.numel(), dtype=torch.bool)
            if n:
                chosen_starts[torch.multinomial(weights, n, replacement=False, generator=g)] = True
            chosen_starts = chosen_starts.view(ids.shape)
        unit = torch.cumsum(starts.long(), dim=1)  # unit number of every token within its row
        unit_chosen = torch.zeros(ids.shape[0], ids.shape[1] + 1, dtype=torch.bool)
        unit_chosen.scatter_(1, torch.where(chosen_starts, unit, 0), chosen_starts)
        unit_chosen[:, 0] = False
        return maskable & torch.gather(unit_chosen, 1, unit)

    def __call__(self, rows: list[torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        ids, attention = pad_rows(rows, self.pad_id, self.cfg.pad_to_multiple_of)
        selected = self.select(ids, attention, g)
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
        p_mask, p_random, _ = self.cfg.replace
        u = torch.rand(ids.shape, generator=g)
        to_mask = selected & (u < p_mask)
        to_random = selected & (u >= p_mask) & (u < p_mask + p_random)
        random_ids = self.random_pool[torch.randint(len(self.random_pool), ids.shape, generator=g)]
        inputs = torch.where(to_mask, torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(to_random, random_ids, inputs)
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}

