"""Markdown tables from models' results, with optional quoted reference rows."""
from __future__ import annotations

from pathlib import Path

from .results import ModelResults, load_results
from .tasks import TASKS

METRIC_LABEL = {"mcc": "MCC", "accuracy": "acc", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman",
                "accuracy_m": "acc-m", "accuracy_mm": "acc-mm"}


def _columns(results: list[ModelResults], references: list[dict]) -> list[tuple[str, str]]:
    names = [n for n in TASKS if any(n in r.tasks for r in results) or any(n in ref["scores"] for ref in references)]
    return [(n, m) for n in names for m in TASKS[n].metrics]


def mean_pm_std(s: dict[str, float], runs: int) -> str:
    """'71.3 ± 0.8': the mean over runs, ± their standard deviation when there are several (± 0.0 too)."""
    return f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if runs > 1 else "")


def markdown_table(results: list[ModelResults], references: list[dict] | None = None) -> str:
    """One row per model: mean over runs of every metric of the chosen cell (± std when runs > 1), the GLUE score
    (kd_core.glue.results: the mean over tasks of each task's mean combined metric) and its runs.

    references: [{"label": "DistilBERT (paper, quoted)", "scores": {"cola": {"mcc": 51.3}, ...}}]"""
    references = references or []
    cols = _columns(results, references)
    head = "| model | " + " | ".join(f"{TASKS[t].folder} {METRIC_LABEL[m]}" for t, m in cols) + " | score | runs |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for r in results:
        cells = []
        for t, m in cols:
            if t not in r.tasks:
                cells.append("–")
                continue
            metrics = r.tasks[t].metrics
            cells.append("failed" if metrics is None else mean_pm_std(metrics[m], len(r.tasks[t].runs)))
        score = f"{r.score:.1f}" + (f" ± {r.score_std:.1f}" if r.score_std is not None else "") if r.score is not None else "–"
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {score} | {r.n_runs} |")
    for ref in references:
        cells = [f"{ref['scores'][t][m]:.1f}" if m in ref["scores"].get(t, {}) else "–" for t, m in cols]
        lines.append(f"| {ref['label']} | " + " | ".join(cells) + " | – | – |")
    notes = [f"- {r.label}, {note}" for r in results for task in r.tasks.values() if (note := task.failure_note())]
    return "\n".join(lines + ([""] + notes if notes else []))


def merge_results(paths: list[str | Path], references: list[dict] | None = None) -> str:
    """One table from several runs' results.json (e.g. a teacher and its students)."""
    return markdown_table([load_results(p) for p in paths], references)
