"""The nine GLUE tasks as data: files, columns, labels, metrics, primary metric.

Columns are named by header where the file has one (index for CoLA, which has none). A task's
"combined score" is the mean of its metrics (DistilBERT's Table 1 convention: MRPC = mean of F1 and
accuracy, STS-B = mean of Pearson and Spearman, MNLI = mean of matched and mismatched accuracy).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Task:
    name: str  # our key: cola, sst2, ...
    folder: str  # GLUE folder: CoLA, SST-2, ...
    hf_config: str  # nyu-mll/glue config name
    text_a: str | int
    text_b: str | int | None
    label: str | int
    labels: tuple[str, ...]  # () for regression
    metrics: tuple[str, ...]
    primary: str
    header: bool = True
    dev_splits: tuple[str, ...] = ("dev",)  # MNLI: dev_matched, dev_mismatched

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("cola", "CoLA", "cola", 3, None, 1, ("0", "1"), ("mcc",), "mcc", header=False),
    Task("sst2", "SST-2", "sst2", "sentence", None, "label", ("0", "1"), ("accuracy",), "accuracy"),
    Task("mrpc", "MRPC", "mrpc", "#1 String", "#2 String", "Quality", ("0", "1"), ("f1", "accuracy"), "f1"),
    Task("stsb", "STS-B", "stsb", "sentence1", "sentence2", "score", (), ("pearson", "spearman"), "pearson"),
    Task("qqp", "QQP", "qqp", "question1", "question2", "is_duplicate", ("0", "1"), ("f1", "accuracy"), "f1"),
    Task("mnli", "MNLI", "mnli", "sentence1", "sentence2", "gold_label", ("contradiction", "entailment", "neutral"),
         ("accuracy_m", "accuracy_mm"), "accuracy_m", dev_splits=("dev_matched", "dev_mismatched")),
    Task("qnli", "QNLI", "qnli", "question", "sentence", "label", ("entailment", "not_entailment"),
         ("accuracy",), "accuracy"),
    Task("rte", "RTE", "rte", "sentence1", "sentence2", "label", ("entailment", "not_entailment"),
         ("accuracy",), "accuracy"),
    Task("wnli", "WNLI", "wnli", "sentence1", "sentence2", "label", ("0", "1"), ("accuracy",), "accuracy"),
]}


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise UserError(f"unknown GLUE task '{name}': give --tasks as a comma-separated list of {', '.join(TASKS)}")
    return TASKS[key]
