"""On-disk token rows: one flat memory-mapped token array and row offsets per split.

Layout of a prepared dataset directory:
  stats.json               sizes, cleaning counts, tokenizer name + vocab hash, max_len, per split the
                           byte size and sha256 of tokens.bin, ...
  <split>/tokens.bin       all rows' token ids, concatenated (uint16 if the vocab fits, else uint32)
  <split>/offsets.npy      int64[n_rows + 1]: row i is tokens[offsets[i]:offsets[i+1]]
Reading maps the files; nothing is loaded into RAM until a row is indexed. Opening checks sizes
only (a truncated file is caught at once); `verify_corpus` also checks the sha256 sums.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

STATS_FILE = "stats.json"
# keys every stats.json written by `prepare` has: what tells our dataset from a user's folder
STATS_KEYS = frozenset({"tokenizer", "vocab_hash", "dtype", "max_len", "splits", "rows", "tokens"})
# a full disk, a hit file-size limit (ulimit -f) or quota: the user's to fix, not a bug
FULL_DISK = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def vocab_hash(tokenizer) -> str:
    """sha256 of the vocabulary (token -> id), identical for identical vocabularies."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def raise_if_full(e: OSError, path: Path) -> None:
    """A full disk while writing `path` as a UserError naming it; the caller re-raises any other OSError."""
    if e.errno in FULL_DISK:
        raise UserError(f"no space left writing {path} ({os.strerror(e.errno)}): free space (or raise the "
                        "file-size limit) or choose another --output") from e


def write_all(f, data: bytes, path: Path) -> None:
    try:
        # a short count is what a full disk looks like to an unbuffered writer
        if f.write(data) != len(data):
            raise OSError(errno.ENOSPC, "short write", str(path))
    except OSError as e:
        raise_if_full(e, path)
        raise


def sync_and_close(f, path: Path) -> None:
    """Flush and fsync, so a full disk shows here and not after the dataset is declared written."""
    try:
        f.flush()
        os.fsync(f.fileno())
        f.close()
    except OSError as e:
        raise_if_full(e, path)
        raise


def write_durably(path: Path, data: bytes) -> None:
    # unbuffered: nothing is left to flush (and fail again) when the `with` closes it after an error
    with open(path, "wb", buffering=0) as f:
        write_all(f, data, path)
        sync_and_close(f, path)


def npy_bytes(array: np.ndarray) -> bytes:
    # np.save to a real file writes through a C stream whose errors on close are lost; bytes we write ourselves
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def check_size(path: Path, expected: int) -> None:
    if not path.is_file():
        raise UserError(f"{path} is missing: the dataset is incomplete; prepare it again")
    size = path.stat().st_size
    if size != expected:
        raise UserError(f"{path} holds {size} bytes but its rows need {expected}: the dataset is truncated or "
                        "damaged (a full disk?); prepare it again")


class RowWriter:
    """Appends rows to `<dir>/tokens.bin`, hashing them as they go; `close()` checks, syncs and writes the offsets."""

    def __init__(self, directory: Path, dtype: np.dtype):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.dtype = directory, dtype
        self.path = directory / "tokens.bin"
        self._file = open(self.path, "wb")
        self.offsets = [0]
        self.sha256 = hashlib.sha256()

    def write(self, row: list[int]) -> None:
        data = np.asarray(row, dtype=self.dtype).tobytes()
        write_all(self._file, data, self.path)
        self.sha256.update(data)
        self.offsets.append(self.offsets[-1] + len(row))

    def close(self) -> None:
        sync_and_close(self._file, self.path)
        check_size(self.path, self.n_bytes)
        write_durably(self.directory / "offsets.npy", npy_bytes(np.asarray(self.offsets, dtype=np.int64)))

    def abandon(self) -> None:
        """Close after a failure; the buffered rest may not fit either, and the file is about to be removed."""
        try:
            self._file.close()
        except OSError:
            pass

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return self.offsets[-1]

    @property
    def n_bytes(self) -> int:
        return self.n_tokens * self.dtype.itemsize

    def stats(self) -> dict:
        return {"rows": self.n_rows, "tokens": self.n_tokens, "bytes": self.n_bytes,
                "sha256": self.sha256.hexdigest()}


class TokenRows:
    """Read-only rows of one split, memory-mapped. rows[i] -> LongTensor of token ids."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        if not (directory / "offsets.npy").is_file():
            raise UserError(f"{directory} is not a prepared split (no offsets.npy); "
                            "run `python -m kd_core.data prepare` first")
        stats = read_stats(directory.parent)
        dtype = np.dtype(stats["dtype"])
        try:
            self.offsets = np.load(directory / "offsets.npy", mmap_mode="r")
        except ValueError as e:
            raise UserError(f"{directory / 'offsets.npy'} is damaged ({e}); prepare the dataset again") from e
        n_tokens = int(self.offsets[-1])
        tokens = directory / "tokens.bin"
        check_size(tokens, n_tokens * dtype.itemsize)
        recorded = stats.get("splits", {}).get(directory.name, {})
        if "bytes" in recorded:  # offsets.npy cut by the same damage as tokens.bin agrees with it; stats.json does not
            check_size(tokens, recorded["bytes"])
        self.tokens = np.memmap(tokens, dtype=dtype, mode="r") if n_tokens else np.zeros(0, dtype=dtype)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range ({len(self)} rows)")
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return torch.from_numpy(self.tokens[start:end].astype(np.int64))

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def read_stats(directory: str | Path) -> dict:
    path = Path(directory) / STATS_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a prepared dataset (no {STATS_FILE}); "
                        f"run `python -m kd_core.data prepare --output {directory}` first")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); prepare the dataset again") from e


def is_prepared_dataset(directory: Path) -> bool:
    """A folder `prepare` wrote (the only kind --overwrite may delete): its stats.json has all our keys."""
    try:
        stats = json.loads((directory / STATS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and STATS_KEYS <= stats.keys()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_corpus(directory: str | Path) -> None:
    """Full check of a prepared dataset: sizes (as on open) and each split's sha256 (reads every byte)."""
    stats = read_stats(directory)
    for split, recorded in stats["splits"].items():
        TokenRows(Path(directory) / split)
        if "sha256" not in recorded:
            raise UserError(f"{directory} records no checksum for '{split}' (prepared by an older version); "
                            "prepare it again to be able to verify it")
        path = Path(directory) / split / "tokens.bin"
        if file_sha256(path) != recorded["sha256"]:
            raise UserError(f"{path} does not match the sha256 in {STATS_FILE}: the file is damaged; "
                            "prepare the dataset again")


def open_corpus(directory: str | Path, tokenizer, split: str = "train") -> TokenRows:
    """Open a split, checking that `tokenizer` is the one the data was built with."""
    stats = read_stats(directory)
    ours = vocab_hash(tokenizer)
    if stats["vocab_hash"] != ours:
        raise UserError(
            f"tokenizer mismatch: {directory} was prepared with tokenizer '{stats['tokenizer']}' "
            f"(vocab {stats['vocab_size']}, hash {stats['vocab_hash'][:12]}), but the model uses "
            f"'{tokenizer.name_or_path}' (vocab {len(tokenizer)}, hash {ours[:12]}). "
            "Prepare the data again with the model's tokenizer.")
    if split not in stats["splits"]:
        raise UserError(f"{directory} has splits {list(stats['splits'])}, not '{split}'")
    return TokenRows(Path(directory) / split)
