"""What GLUE fine-tuning produced, typed: a run, a grid cell, a task's result, a model's results.

ONE score, defined here and used by every CLI, table and claim:
- a run's score on a task is the task's combined metric (the mean of its metrics: MRPC F1 and accuracy, STS-B
  Pearson and Spearman, MNLI matched and mismatched; one metric elsewhere);
- a task's score is the MEAN of that over the finite runs of the chosen cell;
- a model's GLUE score is the mean of its tasks' scores (and the same without WNLI).
Mean, not median: the claims compare means (a difference of means is what the bootstrap in compare.py resamples),
and with the 2-6 runs a row has here the median of an even count is itself a mean of two, so a second statistic
would only give the same row two numbers. A cell is chosen by that score among the cells with no failed run
(a cell with a diverged seed ranks below every cell without one, then by its score over the finite seeds): a
diverged result is never chosen over a finite one, and an unstable cell cannot win on its lucky seeds.

results.json keeps the fields it always had (per task: status, cells with their runs, chosen, metrics, combined,
n_runs, n_failed; glue_macro, glue_macro_without_wnli), written from these classes; any older file loads, since
everything is recomputed from the runs.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .tasks import get_task


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


@dataclass
class Run:
    """One fine-tuning run (one seed of one cell): its dev metrics, and what result.json holds besides."""
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    combined: float | None = None
    status: str = "ok"  # or "diverged"
    error: str | None = None
    source: str | None = None  # the model fine-tuned, where a row pools several (distillation seeds)
    record: dict = field(default_factory=dict)  # the rest of result.json: dev_examples, settings, wall_s, stages...

    @property
    def ok(self) -> bool:
        """Finished with finite metrics (runs recorded before divergence was detected may hold NaN)."""
        return (self.status == "ok" and bool(self.metrics) and self.combined is not None
                and all(map(math.isfinite, [*self.metrics.values(), self.combined])))

    @property
    def has_predictions(self) -> bool:
        return "dev_examples" in self.record

    def dev(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, labels) of one dev split."""
        examples = self.record["dev_examples"][split]
        return np.asarray(examples["predictions"]), np.asarray(examples["labels"])

    @classmethod
    def from_json(cls, d: dict) -> "Run":
        known = {"seed", "metrics", "combined", "status", "error", "source"}
        return cls(seed=d.get("seed", 0), metrics=d.get("metrics") or {}, combined=d.get("combined"),
                   status=d.get("status", "ok"), error=d.get("error"), source=d.get("source"),
                   record={k: v for k, v in d.items() if k not in known})

    def to_json(self) -> dict:
        own = {"seed": self.seed, "status": self.status, "metrics": self.metrics, "combined": self.combined}
        own.update({k: v for k, v in (("error", self.error), ("source", self.source)) if v is not None})
        return {**self.record, **own}


@dataclass
class Cell:
    """The seeds of one (learning rate, batch size) point, or the pooled runs of a row."""
    runs: list[Run]

    @property
    def finite(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]

    @property
    def score(self) -> float | None:
        """The mean combined metric over the finite runs; None when none finished."""
        return statistics.fmean(r.combined for r in self.finite) if self.finite else None

    def metrics(self) -> dict[str, dict[str, float]] | None:
        if not self.finite:
            return None
        return {m: spread([r.metrics[m] for r in self.finite]) for m in self.finite[0].metrics}

    def to_json(self) -> dict:
        finite = self.finite
        return {"runs": [r.to_json() for r in self.runs], "n_failed": len(self.failed),
                "failed": [{"seed": r.seed, "error": r.error or "non-finite dev metrics"} for r in self.failed],
                "metrics": self.metrics(), "combined": spread([r.combined for r in finite]) if finite else None,
                "score": self.score}


def choose(cells: dict[str, Cell]) -> str | None:
    """The cell with the best score among those with no failed run, else the best over finite seeds; None when no
    cell has a finite run."""
    candidates = [name for name, cell in cells.items() if cell.score is not None]
    return max(candidates, key=lambda n: (not cells[n].failed, cells[n].score)) if candidates else None


@dataclass
class TaskResult:
    name: str
    cells: dict[str, Cell]
    chosen: str | None = None

    def __post_init__(self):
        if self.chosen is None or self.chosen not in self.cells:
            self.chosen = choose(self.cells)

    @property
    def runs(self) -> list[Run]:
        """The finite runs behind the task's score (the chosen cell's)."""
        return self.cells[self.chosen].finite if self.chosen else []

    @property
    def score(self) -> float | None:
        return self.cells[self.chosen].score if self.chosen else None

    @property
    def metrics(self) -> dict[str, dict[str, float]] | None:
        return self.cells[self.chosen].metrics() if self.chosen else None

    @property
    def n_runs(self) -> int:
        return sum(len(c.runs) for c in self.cells.values())

    @property
    def n_failed(self) -> int:
        return sum(len(c.failed) for c in self.cells.values())

    def failure_note(self) -> str | None:
        """'task rte: 2 of 6 runs diverged (lr0.0001_bs16 seeds 0, 2); ...', or None when every run was finite."""
        seeds = {name: [str(r.seed) for r in cell.failed] for name, cell in self.cells.items() if cell.failed}
        if not seeds:
            return None
        where = "; ".join(f"{name} seed{'s' if len(s) > 1 else ''} {', '.join(s)}" for name, s in seeds.items())
        note = f"task {self.name}: {self.n_failed} of {self.n_runs} runs diverged ({where}; errors in results.json)"
        if self.chosen is None:
            return note + ": no score, so no GLUE score that includes it"
        if self.chosen in seeds:
            return note + f"; the chosen {self.chosen} is scored over its {len(self.runs)} finite seed(s)"
        return note

    @classmethod
    def from_json(cls, name: str, d: dict) -> "TaskResult":
        return cls(name, {c: Cell([Run.from_json(r) for r in cell["runs"]]) for c, cell in d.get("cells", {}).items()},
                   d.get("chosen"))

    def to_json(self) -> dict:
        cell = self.cells[self.chosen].to_json() if self.chosen else None
        return {"status": "ok" if self.chosen else "failed", "cells": {n: c.to_json() for n, c in self.cells.items()},
                "chosen": self.chosen, "metrics": cell["metrics"] if cell else None,
                "combined": cell["combined"] if cell else None, "score": self.score,
                "primary": get_task(self.name).primary, "n_runs": self.n_runs, "n_failed": self.n_failed}


@dataclass
class ModelResults:
    """One row of a table: a model's (or pooled models') results on its tasks."""
    label: str
    model: str
    tasks: dict[str, TaskResult]
    models: list[str] = field(default_factory=list)  # the distilled models pooled into this row (one per seed)
    extra: dict = field(default_factory=dict)  # grid, glue_dir, wall_s, provenance: carried into results.json

    def __post_init__(self):
        self.models = self.models or [self.model]

    def _macro(self, names: list[str]) -> float | None:
        scores = [self.tasks[t].score for t in names]
        return statistics.fmean(scores) if names and None not in scores else None

    @property
    def score(self) -> float | None:
        """THE GLUE score: the mean over tasks of each task's score (None when a task has no finite run)."""
        return self._macro(list(self.tasks))

    @property
    def score_without_wnli(self) -> float | None:
        return self._macro([t for t in self.tasks if t != "wnli"])

    def score_note(self) -> str | None:
        if failed := [t for t, r in self.tasks.items() if r.score is None]:
            return f"not computed: every run of {', '.join(failed)} diverged"
        return None

    def run_scores(self) -> list[float]:
        """The GLUE score of each run (the i-th finite run of every task), for a spread over runs; empty when
        the tasks hold different numbers of runs or one failed."""
        per_task = [r.runs for r in self.tasks.values()]
        if not per_task or len({len(runs) for runs in per_task}) != 1:
            return []
        return [statistics.fmean(run.combined for run in column) for column in zip(*per_task)]

    @property
    def score_std(self) -> float | None:
        scores = self.run_scores()
        return statistics.stdev(scores) if len(scores) > 1 else None

    @property
    def n_runs(self) -> int:
        """Finite runs behind the score (fine-tuning seeds, times distillation seeds when pooled): the fewest of any task."""
        return min((len(r.runs) for r in self.tasks.values()), default=0)

    def has_predictions(self, tasks: list[str]) -> bool:
        return all(t in self.tasks and self.tasks[t].runs and all(r.has_predictions for r in self.tasks[t].runs)
                   for t in tasks)

    def restricted(self, tasks: list[str]) -> "ModelResults":
        return ModelResults(self.label, self.model, {t: self.tasks[t] for t in tasks}, self.models, self.extra)

    @classmethod
    def from_json(cls, d: dict) -> "ModelResults":
        known = {"label", "model", "models", "tasks", "glue_macro", "glue_macro_without_wnli", "glue_macro_reason",
                 "score", "pooled_from"}
        return cls(d.get("label", Path(d.get("model", "model")).name), d.get("model", ""),
                   {n: TaskResult.from_json(n, t) for n, t in d["tasks"].items()}, d.get("models", []),
                   {k: v for k, v in d.items() if k not in known})

    def to_json(self) -> dict:
        out = {"model": self.model, "label": self.label, "tasks": {n: t.to_json() for n, t in self.tasks.items()},
               "glue_macro": self.score}
        if any(t != "wnli" for t in self.tasks):
            out["glue_macro_without_wnli"] = self.score_without_wnli
        if note := self.score_note():
            out["glue_macro_reason"] = note
        if len(self.models) > 1:
            out.update(models=self.models, pooled_from=len(self.models))
        return {**out, **self.extra}


def load_results(path: str | Path) -> ModelResults:
    """A results.json (or the folder holding one), with a clear error for anything else."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise UserError(f"{path}: no results.json; give the --output-dir of `python -m kd_core.glue` or its results.json")
    try:
        data = json.loads(p.read_text())
        return ModelResults.from_json(data)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{p} is not a results.json of `python -m kd_core.glue` ({type(e).__name__}: {e}); "
                        "give the results.json that command wrote") from None


def chosen_runs(task: TaskResult) -> list[Run]:
    """Every run of the chosen cell, failed ones included; with no chosen cell (all failed), every run."""
    return task.cells[task.chosen].runs if task.chosen else [r for c in task.cells.values() for r in c.runs]


def pooled(results: list[ModelResults], label: str) -> ModelResults:
    """One row from runs of the same recipe with different distillation seeds: per task, the runs of each result's
    chosen cell pooled (distillation seeds x fine-tuning seeds) into one cell, each run marked with its model."""
    if len(results) == 1:
        return ModelResults(label, results[0].model, results[0].tasks, results[0].models, results[0].extra)
    tasks = {}
    for name in results[0].tasks:
        runs = [Run(**{**run.__dict__, "source": r.model}) for r in results for run in chosen_runs(r.tasks[name])]
        tasks[name] = TaskResult(name, {"pooled": Cell(runs)})
    return ModelResults(label, results[0].model, tasks, [r.model for r in results])
