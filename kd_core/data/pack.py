"""Packing tokenized documents into rows of at most `max_len` tokens.

`pack` follows the HerBERT report (section 4.1): every row starts with [CLS]; each document (or
piece of one) placed in a row is followed by [SEP]; when a document does not fit, it is cut at
the end of the last whole word that fits (never between a word's sub-word pieces). If the piece
that would stay in the current row is shorter than `min_piece` tokens, the whole document moves to
the next row instead; otherwise the document is split and its rest continues on the next row
(by the same rule). A single word longer than a whole row is the only thing ever cut mid-word.

`segments` is the DistilBERT style: one document per row ([CLS] doc [SEP]), a document longer
than a row split at word boundaries into several rows; no concatenation.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import UserError


def last_word_cut(word_start: Sequence[bool], limit: int) -> int:
    """Largest cut <= limit such that tokens[:cut] are whole words (cut is a word start or the end)."""
    if limit >= len(word_start):
        return len(word_start)
    for cut in range(limit, 0, -1):
        if word_start[cut]:
            return cut
    return 0


class Packer:
    """Stateful row builder; feed documents with `add`, then `flush` at the end."""

    def __init__(self, max_len: int, cls_id: int, sep_id: int, min_piece: int = 40):
        if max_len < 3:
            raise UserError(f"max_len={max_len} leaves no room for [CLS] text [SEP]; use at least 3")
        self.max_len, self.cls, self.sep, self.min_piece = max_len, cls_id, sep_id, min_piece
        self.row: list[int] = [cls_id]

    def _close(self) -> Iterator[list[int]]:
        if len(self.row) > 1:
            yield self.row
        self.row = [self.cls]

    def add(self, ids: Sequence[int], word_start: Sequence[bool]) -> Iterator[list[int]]:
        """Place one document; yields every row it completes."""
        ids, word_start = list(ids), list(word_start)
        while ids:
            room = self.max_len - len(self.row) - 1  # one token kept for the closing [SEP]
            if len(ids) <= room:
                self.row += ids + [self.sep]
                ids = []
                if len(self.row) >= self.max_len - 1:
                    yield from self._close()
                continue
            cut = last_word_cut(word_start, room)
            if cut < self.min_piece and len(self.row) > 1:
                yield from self._close()  # too short a piece to start here: the document moves on
                continue
            if cut == 0:  # one word longer than an empty row: the only mid-word cut
                cut = room
            self.row += ids[:cut] + [self.sep]
            ids, word_start = ids[cut:], word_start[cut:]
            yield from self._close()

    def flush(self) -> Iterator[list[int]]:
        yield from self._close()


def segment_rows(ids: Sequence[int], word_start: Sequence[bool], max_len: int, cls_id: int,
                 sep_id: int) -> Iterator[list[int]]:
    """One document as [CLS] ... [SEP] rows, split at word boundaries when longer than a row."""
    ids, word_start = list(ids), list(word_start)
    room = max_len - 2
    while ids:
        cut = last_word_cut(word_start, room) or room
        yield [cls_id] + ids[:cut] + [sep_id]
        ids, word_start = ids[cut:], word_start[cut:]


def pack_documents(docs: Iterable[tuple[Sequence[int], Sequence[bool]]], max_len: int, cls_id: int,
                   sep_id: int, min_piece: int = 40, mode: str = "pack") -> Iterator[list[int]]:
    if mode == "pack":
        packer = Packer(max_len, cls_id, sep_id, min_piece)
        for ids, ws in docs:
            yield from packer.add(ids, ws)
        yield from packer.flush()
    elif mode == "segments":
        for ids, ws in docs:
            yield from segment_rows(ids, ws, max_len, cls_id, sep_id)
    else:
        raise UserError(f"unknown packing mode '{mode}'; use pack or segments")


def word_start_table(tokenizer) -> np.ndarray:
    """bool[vocab]: does this token begin a word? WordPiece marks continuations with '##',
    SentencePiece marks word starts with '▁', byte-level BPE with 'Ġ'. Special tokens begin words."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    table = np.ones(size, dtype=bool)
    tokens = list(vocab)
    if any(t.startswith("##") for t in tokens):
        for t, i in vocab.items():
            table[i] = not t.startswith("##")
    elif any(t.startswith("▁") for t in tokens):
        for t, i in vocab.items():
            table[i] = t.startswith("▁")
    elif any(t.startswith("Ġ") for t in tokens):
        for t, i in vocab.items():
            table[i] = t.startswith("Ġ")
    table[list(tokenizer.all_special_ids)] = True
    return table
