"""Cleaning rules after the HerBERT report (section 2), each a switch with a count of what it removed.

Rules act on paragraphs: strip HTML tags and entities; drop paragraphs shorter than `min_chars`;
drop paragraphs whose share of characters that are neither alphanumeric nor whitespace exceeds
`max_non_alnum`; drop exact duplicates of normalised text (lower-cased, whitespace collapsed).
"""
from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass, field

TAG = re.compile(r"<[^>]{1,200}>")
SPACE = re.compile(r"\s+")


@dataclass
class CleanConfig:
    strip_html: bool = True
    min_chars: int = 15  # 0 disables
    max_non_alnum: float = 0.10  # 1.0 disables
    dedup: bool = True


@dataclass
class CleanCounts:
    paragraphs_in: int = 0
    html_stripped: int = 0  # paragraphs changed (kept)
    too_short: int = 0
    non_alnum: int = 0
    duplicate: int = 0
    paragraphs_kept: int = 0
    documents_in: int = 0
    documents_kept: int = 0


def strip_html(text: str) -> str:
    return SPACE.sub(" ", html.unescape(TAG.sub(" ", text))).strip()


def non_alnum_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 1.0
    return sum(not c.isalnum() for c in chars) / len(chars)


def normalise(text: str) -> str:
    return SPACE.sub(" ", text.lower()).strip()


@dataclass
class Cleaner:
    """Stateful over a corpus: remembers what it has seen, for deduplication (8 bytes a paragraph)."""
    cfg: CleanConfig
    counts: CleanCounts = field(default_factory=CleanCounts)
    _seen: set = field(default_factory=set)

    def paragraph(self, text: str) -> str | None:
        c = self.counts
        c.paragraphs_in += 1
        if self.cfg.strip_html:
            stripped = strip_html(text)
            if stripped != SPACE.sub(" ", text).strip():
                c.html_stripped += 1
            text = stripped
        if self.cfg.min_chars and len(text) < self.cfg.min_chars:
            c.too_short += 1
            return None
        if non_alnum_share(text) > self.cfg.max_non_alnum:
            c.non_alnum += 1
            return None
        if self.cfg.dedup:
            key = hashlib.blake2b(normalise(text).encode(), digest_size=8).digest()
            if key in self._seen:
                c.duplicate += 1
                return None
            self._seen.add(key)
        c.paragraphs_kept += 1
        return text

    def document(self, paragraphs: list[str]) -> list[str]:
        self.counts.documents_in += 1
        kept = [p for p in map(self.paragraph, paragraphs) if p is not None]
        if kept:
            self.counts.documents_kept += 1
        return kept
