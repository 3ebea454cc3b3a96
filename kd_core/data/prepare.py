"""Corpus preparation: read -> clean -> tokenize -> pack -> split -> memory-mapped rows.

Streams documents end to end, so memory does not grow with the corpus (apart from the 8-byte
fingerprints the deduplication keeps and the row offsets). The dataset is written to
`<output>.tmp`, every write checked and fsynced, and renamed when complete: a failed or
interrupted run leaves no dataset behind. Settings, inputs and the output path are checked
before any work; --overwrite only ever deletes a dataset `prepare` wrote.
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

from ..errors import UserError
from ..files import fsync_dir
from .clean import CleanConfig, CleanCounts, Cleaner
from .pack import pack_documents, word_start_table
from .sources import Document, TextFormat, hf_documents, read_documents, text_files
from .store import (STATS_FILE, RowWriter, is_prepared_dataset, npy_bytes, token_dtype, vocab_hash,
                    write_durably)

SPLITS = ("train", "valid")
# what a run killed before its rename leaves in <output>.tmp: such a folder may be deleted
LEFTOVER_NAMES = frozenset({*SPLITS, "token_counts.npy", STATS_FILE})
# an English corpus under bert-base-uncased has well under 0.1% [UNK]
WARN_UNKNOWN_SHARE, MAX_UNKNOWN_SHARE = 0.05, 0.5


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
        raise UserError(f"cannot load tokenizer '{name_or_path}': give a local directory with "
                        f"tokenizer files, or a hub name when online ({e})") from e
    if not tok.is_fast:
        raise UserError(f"tokenizer '{name_or_path}' is not a fast (Rust) tokenizer; corpus preparation needs one: "
                        "give a folder with a tokenizer.json")
    if set(tok.get_vocab()) <= set(tok.all_special_tokens) | set(tok.added_tokens_encoder):
        # transformers builds such a tokenizer from a bare tokenizer_config.json: every word would be [UNK]
        raise UserError(f"tokenizer '{name_or_path}' has no vocabulary, only its {len(tok)} special tokens (no "
                        "vocab.txt, vocab.json or tokenizer.json was found): give the folder the tokenizer was saved "
                        "to with save_pretrained")
    return tok


def check_unknown_share(tokenizer, token_counts: np.ndarray) -> float:
    """The share of training tokens that are [UNK]; more than half means the tokenizer does not fit the text."""
    unk = tokenizer.unk_token_id
    share = float(token_counts[unk] / max(token_counts.sum(), 1)) if unk is not None else 0.0
    if share > MAX_UNKNOWN_SHARE:
        raise UserError(f"{share:.0%} of the tokens are {tokenizer.unk_token}: tokenizer '{tokenizer.name_or_path}' "
                        "does not fit this text (another language or script?); give the tokenizer the model was "
                        "trained with")
    if share > WARN_UNKNOWN_SHARE:
        print(f"warning: {share:.1%} of the tokens are {tokenizer.unk_token} (recorded as unk_share in stats.json)")
    return share


def check_max_len(tokenizer, max_len: int) -> None:
    limit = tokenizer.model_max_length
    if limit and limit < 1_000_000 and max_len > limit:
        raise UserError(f"max_len={max_len} is over the limit of tokenizer '{tokenizer.name_or_path}' "
                        f"({limit} positions); lower --max-len")


def check_config(cfg: PrepareConfig) -> None:
    """Settings that would end in an empty or wrong dataset, refused before any work."""
    if not cfg.inputs and not cfg.hf_dataset:
        raise UserError("no input: give --input files/folders or --hf-dataset")
    if not 0 <= cfg.valid_fraction < 1:  # also refuses NaN
        raise UserError(f"--valid-fraction {cfg.valid_fraction} is outside [0, 1): give the share of rows kept "
                        "for validation, e.g. 0.01 (0 for none)")
    if cfg.max_len <= 2:
        raise UserError(f"--max-len {cfg.max_len} leaves no room for [CLS] text [SEP]: give at least 3 (128 is usual)")
    if cfg.min_piece < 0:
        raise UserError(f"--min-piece {cfg.min_piece} is negative: give 0 or more tokens")
    if cfg.num_proc < 1:
        raise UserError(f"--num-proc {cfg.num_proc}: give 1 or more processes")
    if cfg.docs_per_batch < 1:
        raise UserError(f"docs_per_batch={cfg.docs_per_batch}: give 1 or more documents")


def temp_dir(out: Path) -> Path:
    return out.with_name(out.name + ".tmp")


def overlaps(a: Path, b: Path) -> bool:
    """Is one path the other, or inside it (after resolving links)?"""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def deletable(path: Path) -> bool:
    """Only a dataset we wrote, or an empty folder, may be replaced: nothing of the user's is lost."""
    return path.is_dir() and not path.is_symlink() and (is_prepared_dataset(path) or not any(path.iterdir()))


def is_leftover(tmp: Path) -> bool:
    return tmp.is_dir() and not tmp.is_symlink() and {p.name for p in tmp.iterdir()} <= LEFTOVER_NAMES


def check_existing_output(out: Path, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--output {out} is an existing file (or link), not a folder: give the path of a new folder")
    if out.exists() and not deletable(out):
        raise UserError(f"--output {out} is a folder that holds no dataset written by prepare (no {STATS_FILE} of "
                        "ours); --overwrite only replaces prepared datasets: choose another --output")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")


def check_output(cfg: PrepareConfig) -> None:
    """Refuse an --output that would delete or mix with an input, or replace anything but our dataset."""
    out = Path(cfg.output)
    tmp = temp_dir(out)
    sources = [Path(p) for p in cfg.inputs]
    if cfg.hf_dataset and Path(cfg.hf_dataset).is_dir():
        sources.append(Path(cfg.hf_dataset))
    for source in sources:
        if overlaps(out, source) or overlaps(tmp, source):
            raise UserError(f"--output {out} overlaps the input {source} (one is, or is inside, the other): "
                            "prepare would delete or mix with the corpus; choose an --output outside the inputs")
    check_existing_output(out, cfg.overwrite)
    if (tmp.exists() or tmp.is_symlink()) and not is_leftover(tmp):
        raise UserError(f"{tmp} exists and is not a leftover of prepare: move it away or choose another --output")


def documents(cfg: PrepareConfig, files: list[Path]) -> Iterator[Document]:
    for path in files:
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


def describe_inputs(files: list[Path], hf_dataset: str | None) -> str:
    names = [str(p) for p in files] + ([f"--hf-dataset {hf_dataset}"] if hf_dataset else [])
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def no_rows_error(cfg: PrepareConfig, files: list[Path], c: CleanCounts, valid_rows: int) -> UserError:
    return UserError(
        f"no training rows from {describe_inputs(files, cfg.hf_dataset)}: read {c.documents_in} documents, "
        f"{c.paragraphs_in} paragraphs; cleaning dropped {c.too_short} too short (--min-chars "
        f"{cfg.clean.min_chars}), {c.non_alnum} mostly symbols (--max-non-alnum {cfg.clean.max_non_alnum}) and "
        f"{c.duplicate} duplicates, kept {c.paragraphs_kept}; {valid_rows} rows went to --valid-fraction "
        f"{cfg.valid_fraction}. Give UTF-8 text inputs that are not empty (check --format), or loosen the rules")


def write_dataset(cfg: PrepareConfig, files: list[Path], tokenizer, tmp: Path, t0: float) -> dict:
    """Every split, the token counts and stats.json under `tmp`, each file checked and fsynced."""
    word_start = word_start_table(tokenizer)
    vocab_size = len(word_start)
    dtype = token_dtype(vocab_size)

    writers = {s: RowWriter(tmp / s, dtype) for s in SPLITS}
    token_counts = np.zeros(vocab_size, dtype=np.int64)
    cleaner = Cleaner(cfg.clean)
    split_rng = random.Random(cfg.seed)
    cleaned = (d for d in map(cleaner.document, documents(cfg, files)) if d)

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
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abandon()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    if writers["train"].n_rows == 0:
        raise no_rows_error(cfg, files, cleaner.counts, writers["valid"].n_rows)
    unk_share = check_unknown_share(tokenizer, token_counts)
    write_durably(tmp / "token_counts.npy", npy_bytes(token_counts))

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
        "unk_share": unk_share,
        "splits": {s: w.stats() for s, w in writers.items()},
        "cleaning": asdict(cleaner.counts),
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "hf_dataset": cfg.hf_dataset,
        "hf_config": cfg.hf_config,
        "config": asdict(cfg),
        "wall_seconds": round(time.perf_counter() - t0, 2),
    }
    stats["tokens_per_second"] = n_tokens / max(stats["wall_seconds"], 1e-9)
    write_durably(tmp / STATS_FILE, json.dumps(stats, indent=1).encode())
    return stats


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """fsync the finished folder's names, then rename it to `out`, replacing only a dataset of ours."""
    for directory in [*(tmp / s for s in SPLITS), tmp]:
        fsync_dir(directory)
    check_existing_output(out, overwrite)  # again: the run may have taken hours, and this is where we delete
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    fsync_dir(out.parent)


def prepare(cfg: PrepareConfig) -> dict:
    """Prepare the corpus described by `cfg`; returns the stats also written to stats.json."""
    t0 = time.perf_counter()
    check_config(cfg)
    files = text_files(cfg.inputs)
    check_output(cfg)
    out = Path(cfg.output)
    tokenizer = load_tokenizer(cfg.tokenizer)
    check_max_len(tokenizer, cfg.max_len)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise UserError(f"tokenizer '{cfg.tokenizer}' has no [CLS]/[SEP] (or <s>/</s>) tokens; "
                        "give a BERT- or RoBERTa-style tokenizer")
    tmp = temp_dir(out)
    if tmp.exists():
        shutil.rmtree(tmp)  # a killed run's leftover (check_output made sure)
    try:
        stats = write_dataset(cfg, files, tokenizer, tmp, t0)
        publish(tmp, out, cfg.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed run leaves nothing to clean up by hand
        raise
    return stats
