"""Corpus preparation: read -> clean -> tokenize -> pack -> split -> memory-mapped rows.

Streams documents end to end, so memory does not grow with the corpus (apart from the 8-byte
fingerprints the deduplication keeps and the row offsets). The dataset is written to
`<output>.tmp` and renamed when complete: an interrupted run leaves no dataset behind.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
from tqdm.auto import tqdm

from .clean import CleanConfig, Cleaner
from .pack import pack_documents, word_start_table
from .sources import Document, TextFormat, hf_documents, read_documents, text_files
from .store import STATS_FILE, RowWriter, token_dtype, vocab_hash

SPLITS = ("train", "valid")


@dataclass
class PrepareConfig:
    tokenizer: str
    output: str
    inputs: list[str] = field(default_factory=list)
    hf_dataset: str | None = None
    hf_config: str | None = None  # a hub dataset's configuration (wikitext: wikitext-103-raw-v1)
    hf_split: str = "train"
    text_column: str = "text"
    text_format: TextFormat = "auto"
    max_len: int = 128
    mode: Literal["pack", "segments"] = "pack"
    min_piece: int = 40
    valid_fraction: float = 0.01
    seed: int = 0
    num_proc: int = 1
    docs_per_batch: int = 256
    overwrite: bool = False
    clean: CleanConfig = field(default_factory=CleanConfig)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as e:
        raise FileNotFoundError(f"cannot load tokenizer '{name_or_path}': give a local directory with "
                                f"tokenizer files, or a hub name when online ({e})") from e
    if not tok.is_fast:
        raise ValueError(f"tokenizer '{name_or_path}' is not a fast (Rust) tokenizer; corpus preparation needs one")
    return tok


def check_max_len(tokenizer, max_len: int) -> None:
    limit = tokenizer.model_max_length
    if limit and limit < 1_000_000 and max_len > limit:
        raise ValueError(f"max_len={max_len} is over the limit of tokenizer '{tokenizer.name_or_path}' "
                         f"({limit} positions); lower --max-len")


def documents(cfg: PrepareConfig) -> Iterator[Document]:
    if not cfg.inputs and not cfg.hf_dataset:
        raise ValueError("no input: give --input files/folders or --hf-dataset")
    for path in text_files(cfg.inputs):
        yield from read_documents(path, cfg.text_format)
    if cfg.hf_dataset:
        yield from hf_documents(cfg.hf_dataset, cfg.hf_split, cfg.text_column, cfg.hf_config)


_worker_tokenizer = None


def _init_worker(name: str) -> None:
    global _worker_tokenizer
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker_tokenizer = load_tokenizer(name)


def tokenize_documents(tokenizer, docs: list[Document]) -> list[list[int]]:
    """Each document's paragraphs tokenized (no special tokens) and concatenated."""
    flat = [p for doc in docs for p in doc]
    encoded = tokenizer(flat, add_special_tokens=False, verbose=False)["input_ids"] if flat else []
    out, i = [], 0
    for doc in docs:
        out.append([t for ids in encoded[i:i + len(doc)] for t in ids])
        i += len(doc)
    return out


def _tokenize_in_worker(docs: list[Document]) -> list[list[int]]:
    return tokenize_documents(_worker_tokenizer, docs)


def _batches(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


def prepare(cfg: PrepareConfig) -> dict:
    """Prepare the corpus described by `cfg`; returns the stats also written to stats.json."""
    t0 = time.perf_counter()
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    tokenizer = load_tokenizer(cfg.tokenizer)
    check_max_len(tokenizer, cfg.max_len)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(f"tokenizer '{cfg.tokenizer}' has no [CLS]/[SEP] (or <s>/</s>) tokens")
    word_start = word_start_table(tokenizer)
    vocab_size = len(word_start)
    dtype = token_dtype(vocab_size)

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    writers = {s: RowWriter(tmp / s, dtype) for s in SPLITS}
    token_counts = np.zeros(vocab_size, dtype=np.int64)
    cleaner = Cleaner(cfg.clean)
    split_rng = random.Random(cfg.seed)
    cleaned = (d for d in map(cleaner.document, documents(cfg)) if d)

    pool = None
    if cfg.num_proc > 1:
        pool = mp.get_context("spawn").Pool(cfg.num_proc, _init_worker, (cfg.tokenizer,))
        tokenized_batches = pool.imap(_tokenize_in_worker, _batches(cleaned, cfg.docs_per_batch))
    else:
        tokenized_batches = (tokenize_documents(tokenizer, b) for b in _batches(cleaned, cfg.docs_per_batch))

    bar = tqdm(desc="prepare", unit="tok", unit_scale=True, dynamic_ncols=True)

    def tokenized_docs():
        for batch in tokenized_batches:
            for ids in batch:
                if ids:
                    bar.update(len(ids))
                    ids_arr = np.asarray(ids)
                    yield ids, word_start[ids_arr]

    try:
        for row in pack_documents(tokenized_docs(), cfg.max_len, tokenizer.cls_token_id,
                                  tokenizer.sep_token_id, cfg.min_piece, cfg.mode):
            split = "valid" if split_rng.random() < cfg.valid_fraction else "train"
            writers[split].write(row)
            if split == "train":
                token_counts += np.bincount(row, minlength=vocab_size)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    for w in writers.values():
        w.close()
    np.save(tmp / "token_counts.npy", token_counts)

    n_rows = sum(w.n_rows for w in writers.values())
    n_tokens = sum(w.n_tokens for w in writers.values())
    stats = {
        "tokenizer": cfg.tokenizer,
        "vocab_size": vocab_size,
        "vocab_hash": vocab_hash(tokenizer),
        "dtype": dtype.name,
        "max_len": cfg.max_len,
        "mode": cfg.mode,
        "min_piece": cfg.min_piece,
        "rows": n_rows,
        "tokens": n_tokens,
        "mean_row_length": n_tokens / max(n_rows, 1),
        "splits": {s: {"rows": w.n_rows, "tokens": w.n_tokens} for s, w in writers.items()},
        "cleaning": asdict(cleaner.counts),
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in text_files(cfg.inputs)],
        "hf_dataset": cfg.hf_dataset,
        "hf_config": cfg.hf_config,
        "config": asdict(cfg),
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }
    stats["tokens_per_second"] = n_tokens / max(stats["wall_seconds"], 1e-9)
    (tmp / STATS_FILE).write_text(json.dumps(stats, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return stats
