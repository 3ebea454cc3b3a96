"""Documents from plain-text files, folders, and Hugging Face datasets, streamed one at a time.

A document is a list of paragraphs (strings). Formats of plain text:
- lines:      one document per line;
- paragraphs: documents separated by blank lines (wrapped lines of a block are joined);
- wikitext:   WikiText raw: an article starts at a ` = Title = ` line; its non-empty lines are
              paragraphs; section headings (` = = Section = = `) are dropped;
- auto:       wikitext when the file has a top-level ` = Title = ` line in its first 100 lines,
              else paragraphs.
"""
from __future__ import annotations

import re
import sys
from itertools import islice
from pathlib import Path
from typing import Iterator, Literal

from ..errors import UserError

TextFormat = Literal["auto", "lines", "paragraphs", "wikitext"]
TEXT_SUFFIXES = (".txt", ".raw", ".text")
WIKI_TITLE = re.compile(r"^ = [^=].* = $")
WIKI_HEADING = re.compile(r"^ (= )+.*( =)+ $")

Document = list[str]
BINARY_PROBE = 8000  # bytes searched for a NUL, as git does to tell binary files from text


def text_files(inputs: list[str | Path]) -> list[Path]:
    """Expand folders into their text files (sorted, recursively); a missing path is an error."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise UserError(f"folder {item} holds no text files (looked for {', '.join(TEXT_SUFFIXES)})")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"input {item} does not exist; give text files, folders of them, "
                            "or --hf-dataset for a Hugging Face dataset")
    return files


MAX_UNDECODABLE = 0.01  # share of lines that may hold stray non-UTF-8 bytes (replaced by U+FFFD) before a file is refused


def text_lines(path: Path, warn: bool = True) -> Iterator[str]:
    """The lines of a UTF-8 text file. A few stray bytes that are not UTF-8 (real corpora have them:
    a Latin-1 character in a Gutenberg book) become U+FFFD with a warning naming the first; a binary
    file, or one where more than 1% of lines do not decode, is a UserError saying where."""
    with open(path, "rb") as f:
        if b"\0" in f.read(BINARY_PROBE):
            raise UserError(f"input {path} is a binary file (it holds NUL bytes), not UTF-8 text: leave it out "
                            "of --input (UTF-16 text must be converted to UTF-8 first)")
    bad, first, n = 0, 0, 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                bad, first = bad + 1, first or n
                yield raw.decode("utf-8", errors="replace")
    if bad > MAX_UNDECODABLE * n:
        raise UserError(f"input {path} is not UTF-8 text: {bad} of {n} lines do not decode (the first is line "
                        f"{first}); convert the file to UTF-8 (e.g. iconv -f LATIN1 -t UTF-8) or leave it out of --input")
    if bad and warn:
        print(f"warning: {path}: {bad} of {n} lines hold bytes that are not UTF-8 (the first is line {first}); "
              "they were replaced by U+FFFD", file=sys.stderr)


def detect_format(path: Path) -> TextFormat:
    head = list(islice(text_lines(path, warn=False), 100))
    return "wikitext" if any(WIKI_TITLE.match(line.rstrip("\n")) for line in head) else "paragraphs"


def read_documents(path: Path, fmt: TextFormat = "auto") -> Iterator[Document]:
    if fmt == "auto":
        fmt = detect_format(path)
    lines = text_lines(path)
    if fmt == "lines":
        for line in lines:
            if line.strip():
                yield [line.strip()]
    elif fmt == "paragraphs":
        block: list[str] = []
        for line in lines:
            if line.strip():
                block.append(line.strip())
            elif block:
                yield [" ".join(block)]
                block = []
        if block:
            yield [" ".join(block)]
    elif fmt == "wikitext":
        doc: Document = []
        for line in lines:
            line = line.rstrip("\n")
            if WIKI_TITLE.match(line):
                if doc:
                    yield doc
                doc = []
            elif line.strip() and not WIKI_HEADING.match(line):
                doc.append(line.strip())
        if doc:
            yield doc
    else:
        raise UserError(f"unknown text format '{fmt}'; use auto, lines, paragraphs or wikitext")


def hf_documents(name_or_path: str, split: str = "train", text_column: str = "text",
                 config: str | None = None) -> Iterator[Document]:
    """Rows of a Hugging Face dataset: a `save_to_disk` folder, or a hub name (streamed)."""
    import datasets

    if Path(name_or_path).is_dir():
        ds = datasets.load_from_disk(name_or_path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UserError(f"dataset {name_or_path} has splits {list(ds)}, not '{split}'")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name_or_path, config, split=split, streaming=True)
    columns = ds.column_names
    if columns is not None and text_column not in columns:
        raise UserError(f"dataset {name_or_path} has no column '{text_column}' (columns: {columns}); "
                        "pass --text-column")
    for row in ds:
        text = row[text_column]
        if text and text.strip():
            yield [p.strip() for p in text.split("\n") if p.strip()]
