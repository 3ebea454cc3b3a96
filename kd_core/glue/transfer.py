"""The transfer set of task-specific distillation: unlabelled text the fine-tuned teacher labels for the student.

Tang et al. 2019 and TinyBERT distil a task teacher over far more text than the labelled set: the teacher's soft
labels carry its knowledge to examples no annotator saw. Sources, in this order:
- the task's own training rows left out of the labelled subset (`transfer_unlabelled_train`), their labels dropped;
- text files (`transfer`): one example a line, UTF-8; for a sentence-pair task the two sentences tab-separated.
`transfer_max` caps the total (0: all), keeping the first rows. An unlabelled example's label is NaN: only the
teacher's prediction trains on it, never a gold-label loss.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserError
from .data import Example
from .tasks import Task


def read_transfer_file(path: str | Path, task: Task) -> list[Example]:
    """Unlabelled examples of `task` from a text file, or a UserError naming the file, line and fix."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"transfer file {p}: no such file; give text files, one example a line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"transfer file {p}: not UTF-8 text (byte {e.start}); convert it, e.g. iconv -t utf-8") from None
    pair = task.text_b is not None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if pair and len(fields) != 2:
            raise UserError(f"{p}:{number}: {task.name} is a sentence-pair task: give the two sentences "
                            f"tab-separated (found {len(fields)} field(s))")
        text_a, text_b = (fields[0], fields[1]) if pair else (line, None)
        examples.append(Example(text_a, text_b, math.nan))
    if not examples:
        raise UserError(f"transfer file {p}: no examples (every line is empty)")
    return examples


def transfer_examples(task: Task, files: list[str], left_out: list[Example], use_left_out: bool,
                      limit: int = 0) -> list[Example]:
    """The transfer set: the training rows left out of the labelled subset (labels dropped) if asked, then each file's."""
    out = [Example(e.text_a, e.text_b, math.nan) for e in left_out] if use_left_out else []
    for path in files:
        out += read_transfer_file(path, task)
    return out[:limit] if limit else out


def is_labelled(example: Example) -> bool:
    return not math.isnan(example.label)
