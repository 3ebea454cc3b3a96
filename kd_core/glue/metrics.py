"""GLUE metrics via scikit-learn and scipy, every standard metric per task, and the macro scores."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .tasks import Task


SPLIT_SUFFIX = {"dev_matched": "_m", "dev_mismatched": "_mm"}  # MNLI's two dev sets


def split_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray, split: str = "dev") -> dict[str, float]:
    """Every standard metric of one dev split, in percent (as the GLUE leaderboard reports them)."""
    if task.is_regression:
        return {"pearson": 100 * float(pearsonr(predictions, labels)[0]),
                "spearman": 100 * float(spearmanr(predictions, labels)[0])}
    if "mcc" in task.metrics:
        return {"mcc": 100 * float(matthews_corrcoef(labels, predictions))}
    out = {"accuracy" + SPLIT_SUFFIX.get(split, ""): 100 * float(accuracy_score(labels, predictions))}
    if "f1" in task.metrics:
        out["f1"] = 100 * float(f1_score(labels, predictions))
    return out


def combined_score(task: Task, scores: dict[str, float]) -> float:
    """Mean of the task's metrics (MRPC: F1 and accuracy; STS-B: Pearson and Spearman; MNLI: m and mm)."""
    return float(np.mean([scores[m] for m in task.metrics]))


def glue_macro(combined: dict[str, float]) -> dict[str, float]:
    """Macro average of the tasks' combined scores, with and without WNLI (over the tasks present)."""
    out = {"glue_macro": float(np.mean(list(combined.values())))} if combined else {}
    without = {k: v for k, v in combined.items() if k != "wnli"}
    if without:
        out["glue_macro_without_wnli"] = float(np.mean(list(without.values())))
    return out
