"""Corpus pipeline: sources -> clean -> tokenize -> pack -> store, and the masking collator."""
from .clean import CleanConfig
from .masking import MaskingCollator, MaskingConfig, pad_rows
from .prepare import PrepareConfig, load_tokenizer, prepare
from .store import TokenRows, open_corpus, read_stats, verify_corpus

__all__ = ["CleanConfig", "MaskingCollator", "MaskingConfig", "pad_rows", "PrepareConfig", "load_tokenizer",
           "prepare", "TokenRows", "open_corpus", "read_stats", "verify_corpus"]
