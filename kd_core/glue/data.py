"""GLUE examples from a local folder in the standard layout, or from the `nyu-mll/glue` hub dataset."""
from __future__ import annotations

import codecs
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, one_line
from .tasks import Task

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: float  # class index, or the score for STS-B


class GlueFormatError(UserError):
    """A malformed row (reported with its file and line), or a file with no examples."""


def _label(task: Task, raw: str, where: str) -> float:
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise GlueFormatError(f"{where}: label '{raw}' is not a number") from None
    if raw not in task.labels:
        raise GlueFormatError(f"{where}: label '{raw}' is not one of {list(task.labels)}")
    return float(task.labels.index(raw))


def tsv_path(task: Task, glue_dir: str | Path, split: str) -> Path:
    """<glue_dir>/<Task folder>/<split>.tsv, or a UserError naming which level of that layout is missing."""
    folder = Path(glue_dir) / task.folder
    path = folder / f"{split}.tsv"
    layout = (f"(standard GLUE layout: <glue-dir>/{task.folder}/{split}.tsv); fix --glue-dir, or leave it out "
              "to load nyu-mll/glue from the Hugging Face Hub")
    if not Path(glue_dir).is_dir():
        raise UserError(f"GLUE directory {glue_dir} does not exist: expected {path} {layout}")
    if not folder.is_dir():
        raise UserError(f"GLUE task {task.name}: no folder {folder}: expected {path} {layout}")
    if not path.is_file():
        raise UserError(f"GLUE task {task.name}: expected {path} {layout}")
    return path


def _no_examples(path: Path) -> GlueFormatError:
    return GlueFormatError(f"{path}: no examples (the file is empty or holds only a header); "
                           "restore it from the GLUE download")


def tsv_text(path: Path) -> str:
    """The file's text: UTF-8 (the GLUE download's), or UTF-16 with its byte-order mark (what some editors save);
    any other encoding is refused naming the line, since guessing one would silently change the examples."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        kind = "UTF-16 without a byte-order mark" if b"\x00" in data[:e.end + 1] else "not UTF-8 (latin-1?)"
        raise GlueFormatError(f"{path}:{line}: the file is {kind}: byte 0x{data[e.start]:02x} is not UTF-8; GLUE "
                              f"files are UTF-8: convert it (e.g. iconv -f latin1 -t utf-8) or restore it from the "
                              "GLUE download") from None


def read_tsv(task: Task, glue_dir: str | Path, split: str) -> list[Example]:
    """Examples of `split` (train, dev, dev_matched, ...) from <glue_dir>/<Task folder>/<split>.tsv."""
    path = tsv_path(task, glue_dir, split)
    examples = []
    with io.StringIO(tsv_text(path), newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None) if task.header else None
        if task.header and header is None:
            raise _no_examples(path)
        width = len(header) if header else 4
        index = {name: i for i, name in enumerate(header)} if header else {}
        cols = []
        for col in (task.text_a, task.text_b, task.label):
            if col is None or isinstance(col, int):
                cols.append(col)
            elif col in index:
                cols.append(index[col])
            else:
                raise GlueFormatError(f"{path}:1: no column '{col}' in header {header}")
        a, b, y = cols
        for line, row in enumerate(rows, start=2 if header else 1):
            if not row:
                continue
            if len(row) != width:
                raise GlueFormatError(f"{path}:{line}: expected {width} tab-separated columns, got {len(row)}")
            examples.append(Example(row[a], row[b] if b is not None else None, _label(task, row[y], f"{path}:{line}")))
    if not examples:  # an empty train split cannot be batched, an empty dev split has no metrics
        raise _no_examples(path)
    return examples


def read_hub(task: Task, split: str) -> list[Example]:
    """The same examples from the Hugging Face `nyu-mll/glue` dataset (needs internet the first time)."""
    import datasets

    hf_split = {"dev": "validation", "dev_matched": "validation_matched",
                "dev_mismatched": "validation_mismatched"}.get(split, split)
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.hf_config, split=hf_split)
    except (OSError, datasets.exceptions.DatasetsError) as e:  # offline, no such split, unreachable hub
        raise UserError(f"cannot load GLUE {task.name} ({split}) from the Hugging Face Hub dataset nyu-mll/glue "
                        f"({type(e).__name__}: {one_line(e)}); offline, give --glue-dir with the GLUE files "
                        f"(<glue-dir>/{task.folder}/{split}.tsv)") from e
    a_col, b_col = {"cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
                    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
                    "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"),
                    "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2")}[task.name]
    names = None if task.is_regression else ds.features["label"].names
    out = []
    for row in ds:
        if task.is_regression:
            label = float(row["label"])
        else:
            raw = str(row["label"]) if task.labels[0] == "0" else names[row["label"]]
            label = float(task.labels.index(raw))
        out.append(Example(row[a_col], row[b_col] if b_col else None, label))
    return out


def load_split(task: Task, split: str, glue_dir: str | Path | None) -> list[Example]:
    return read_tsv(task, glue_dir, split) if glue_dir else read_hub(task, split)
