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
from itertools import islice
from pathlib import Path
from typing import Iterator, Literal

TextFormat = Literal["auto", "lines", "paragraphs", "wikitext"]
TEXT_SUFFIXES = (".txt", ".raw", ".text")
WIKI_TITLE = re.compile(r"^ = [^=].* = $")
WIKI_HEADING = re.compile(r"^ (= )+.*( =)+ $")

Document = list[str]


def text_files(inputs: list[str | Path]) -> list[Path]:
    """Expand folders into their text files (sorted, recursively); a missing path is an error."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {item} holds no text files (looked for {', '.join(TEXT_SUFFIXES)})")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"input {item} does not exist; give text files, folders of them, "
                                    "or --hf-dataset for a Hugging Face dataset")
    return files


def detect_format(path: Path) -> TextFormat:
    with open(path, encoding="utf-8", errors="replace") as f:
        head = list(islice(f, 100))
    return "wikitext" if any(WIKI_TITLE.match(line.rstrip("\n")) for line in head) else "paragraphs"


def read_documents(path: Path, fmt: TextFormat = "auto") -> Iterator[Document]:
    if fmt == "auto":
        fmt = detect_format(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        if fmt == "lines":
            for line in f:
                if line.strip():
                    yield [line.strip()]
        elif fmt == "paragraphs":
            block: list[str] = []
            for line in f:
                if line.strip():
                    block.append(line.strip())
                elif block:
                    yield [" ".join(block)]
                    block = []
            if block:
                yield [" ".join(block)]
        elif fmt == "wikitext":
            doc: Document = []
            for line in f:
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
            raise ValueError(f"unknown text format '{fmt}'; use auto, lines, paragraphs or wikitext")


def hf_documents(name_or_path: str, split: str = "train", text_column: str = "text",
                 config: str | None = None) -> Iterator[Document]:
    """Rows of a Hugging Face dataset: a `save_to_disk` folder, or a hub name (streamed)."""
    import datasets

    if Path(name_or_path).is_dir():
        ds = datasets.load_from_disk(name_or_path)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"dataset {name_or_path} has splits {list(ds)}, not '{split}'")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name_or_path, config, split=split, streaming=True)
    columns = ds.column_names
    if columns is not None and text_column not in columns:
        raise KeyError(f"dataset {name_or_path} has no column '{text_column}' (columns: {columns}); "
                       "pass --text-column")
    for row in ds:
        text = row[text_column]
        if text and text.strip():
            yield [p.strip() for p in text.split("\n") if p.strip()]
