"""Markdown tables from results.json files, with optional quoted reference rows."""
from __future__ import annotations

import json
from pathlib import Path

from .tasks import TASKS

METRIC_LABEL = {"mcc": "MCC", "accuracy": "acc", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman",
                "accuracy_m": "acc-m", "accuracy_mm": "acc-mm"}


def _columns(results: list[dict], references: list[dict]) -> list[tuple[str, str]]:
    names = [n for n in TASKS if any(n in r["tasks"] for r in results) or any(n in ref["scores"] for ref in references)]
    return [(n, m) for n in names for m in TASKS[n].metrics]


def markdown_table(results: list[dict], references: list[dict] | None = None) -> str:
    """One row per model: mean over seeds of every metric of the chosen cell (± std when seeds > 1), and the
    macro of the tasks' mean combined scores.

    references: [{"label": "DistilBERT (paper, quoted)", "scores": {"cola": {"mcc": 51.3}, ...}}]"""
    references = references or []
    cols = _columns(results, references)
    head = "| model | " + " | ".join(f"{TASKS[t].folder} {METRIC_LABEL[m]}" for t, m in cols) + " | macro |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for r in results:
        cells = []
        for t, m in cols:
            if t not in r["tasks"]:
                cells.append("–")
                continue
            metrics = r["tasks"][t]["metrics"]
            if metrics is None:  # every run of the task diverged
                cells.append("failed")
                continue
            s = metrics[m]
            seeds = r["tasks"][t].get("n_runs", 1) - r["tasks"][t].get("n_failed", 0)
            cells.append(f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s["std"] or seeds > 1 else ""))
        macro = macro_of_means(r)
        lines.append(f"| {r['label']} | " + " | ".join(cells) + (f" | {macro:.1f} |" if macro is not None else " | – |"))
    for ref in references:
        cells = [f"{ref['scores'][t][m]:.1f}" if m in ref["scores"].get(t, {}) else "–" for t, m in cols]
        lines.append(f"| {ref['label']} | " + " | ".join(cells) + " | – |")
    notes = [f"- {r['label']}, {note}" for r in results for t, task in r["tasks"].items()
             if (note := failure_note(t, task))]
    return "\n".join(lines + ([""] + notes if notes else []))


def macro_of_means(result: dict) -> float | None:
    """The mean over tasks of each task's combined score averaged over seeds; None when a task failed."""
    combined = [task["combined"] for task in result["tasks"].values()]
    if not combined or any(c is None for c in combined):
        return None
    return sum(c["mean"] for c in combined) / len(combined)


def failure_note(task: str, result: dict) -> str | None:
    """'task rte: 2 of 6 runs diverged (lr0.0001_bs16 seeds 0, 2); ...', or None when every run was finite."""
    cells = result.get("cells", {})  # results.json files written before failures were recorded have none
    seeds = {name: [str(f["seed"]) for f in cell["failed"]] for name, cell in cells.items() if cell.get("failed")}
    if not seeds:
        return None
    where = "; ".join(f"{name} seed{'s' if len(s) > 1 else ''} {', '.join(s)}" for name, s in seeds.items())
    note = f"task {task}: {result['n_failed']} of {result['n_runs']} runs diverged ({where}; errors in results.json)"
    chosen = result["chosen"]
    if chosen is None:
        return note + ": no score, so no GLUE macro that includes it"
    if chosen in seeds:
        n_finite = len(cells[chosen]["runs"]) - len(seeds[chosen])
        return note + f"; the chosen {chosen} is scored over its {n_finite} finite seed(s)"
    return note


def merge_results(paths: list[str | Path], references: list[dict] | None = None) -> str:
    """One table from several runs' results.json (e.g. a teacher and its students)."""
    return markdown_table([json.loads(Path(p).read_text()) for p in paths], references)
