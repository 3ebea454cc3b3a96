"""GLUE metrics via scikit-learn and scipy: every standard metric per task (the score over runs and tasks is
kd_core.glue.results')."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ..errors import UserError
from .tasks import Task


SPLIT_SUFFIX = {"dev_matched": "_m", "dev_mismatched": "_mm"}  # MNLI's two dev sets


class DivergedError(UserError):
    """Non-finite predictions or an undefined dev score: the run diverged and its metrics mean nothing."""


def split_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray, split: str = "dev") -> dict[str, float]:
    """Every standard metric of one dev split, in percent (as the GLUE leaderboard reports them)."""
    if bad := int((~np.isfinite(predictions)).sum()):  # NaN predictions would crash sklearn or score as noise
        raise DivergedError(f"{split}: {bad} of {len(predictions)} predictions are not finite (the model "
                            "diverged); lower the learning rate")
    out = _scores(task, predictions, labels, split)
    if undefined := [m for m, v in out.items() if not math.isfinite(v)]:
        raise DivergedError(f"{split}: {', '.join(undefined)} undefined as the predictions (or labels) are "
                            "constant, as after training collapsed; lower the learning rate")
    return out


def _scores(task: Task, predictions: np.ndarray, labels: np.ndarray, split: str) -> dict[str, float]:
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
