"""On-disk token rows: one flat memory-mapped token array and row offsets per split.

Layout of a prepared dataset directory:
  stats.json               sizes, cleaning counts, tokenizer name + vocab hash, max_len, ...
  <split>/tokens.bin       all rows' token ids, concatenated (uint16 if the vocab fits, else uint32)
  <split>/offsets.npy      int64[n_rows + 1]: row i is tokens[offsets[i]:offsets[i+1]]
Reading maps the files; nothing is loaded into RAM until a row is indexed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

STATS_FILE = "stats.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def vocab_hash(tokenizer) -> str:
    """sha256 of the vocabulary (token -> id), identical for identical vocabularies."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


class RowWriter:
    """Appends rows to `<dir>/tokens.bin`; `close()` writes the offsets."""

    def __init__(self, directory: Path, dtype: np.dtype):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.dtype = directory, dtype
        self._file = open(directory / "tokens.bin", "wb")
        self.offsets = [0]

    def write(self, row: list[int]) -> None:
        np.asarray(row, dtype=self.dtype).tofile(self._file)
        self.offsets.append(self.offsets[-1] + len(row))

    def close(self) -> None:
        self._file.close()
        np.save(self.directory / "offsets.npy", np.asarray(self.offsets, dtype=np.int64))

    @property
    def n_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return self.offsets[-1]


class TokenRows:
    """Read-only rows of one split, memory-mapped. rows[i] -> LongTensor of token ids."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        if not (directory / "offsets.npy").is_file():
            raise FileNotFoundError(f"{directory} is not a prepared split (no offsets.npy); "
                                    "run `python -m kd_core.data prepare` first")
        stats = json.loads((directory.parent / STATS_FILE).read_text())
        self.offsets = np.load(directory / "offsets.npy", mmap_mode="r")
        n_tokens = int(self.offsets[-1])
        self.tokens = (np.memmap(directory / "tokens.bin", dtype=np.dtype(stats["dtype"]), mode="r")
                       if n_tokens else np.zeros(0, dtype=np.dtype(stats["dtype"])))

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
        raise FileNotFoundError(f"{directory} is not a prepared dataset (no {STATS_FILE}); "
                                "run `python -m kd_core.data prepare --output {directory}` first")
    return json.loads(path.read_text())


def open_corpus(directory: str | Path, tokenizer, split: str = "train") -> TokenRows:
    """Open a split, checking that `tokenizer` is the one the data was built with."""
    stats = read_stats(directory)
    ours = vocab_hash(tokenizer)
    if stats["vocab_hash"] != ours:
        raise ValueError(
            f"tokenizer mismatch: {directory} was prepared with tokenizer '{stats['tokenizer']}' "
            f"(vocab {stats['vocab_size']}, hash {stats['vocab_hash'][:12]}), but the model uses "
            f"'{tokenizer.name_or_path}' (vocab {len(tokenizer)}, hash {ours[:12]}). "
            "Prepare the data again with the model's tokenizer.")
    if split not in stats["splits"]:
        raise KeyError(f"{directory} has splits {list(stats['splits'])}, not '{split}'")
    return TokenRows(Path(directory) / split)
