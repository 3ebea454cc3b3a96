"""Is the difference between two models on a dev set real? A paired bootstrap over dev examples,
combined over fine-tuning seeds.

    python -m kd_core.glue.compare RUN_A/results.json RUN_B/results.json [--boot 2000] [--seed 0]

For each task both runs have (their chosen cells, finite seeds only) and each dev split: the mean over
seeds of the task's primary metric for A and for B, the difference A - B, its 95% percentile interval
and a two-sided p-value. Each bootstrap replicate draws dev examples with replacement, the same draw for
every seed of both models (paired), and recomputes every seed's metric on it. A difference counts as
significant only when its interval excludes 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.stats import rankdata

from ..cli import exit_code_of
from ..errors import UserError
from .grid import summarise_cell
from .metrics import SPLIT_SUFFIX, _scores, glue_macro
from .tasks import Task, get_task

Score = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class Difference:
    task: str
    metric: str
    a_mean: float
    a_std: float
    b_mean: float
    b_std: float
    diff: float  # mean over A's seeds minus mean over B's seeds
    low: float  # 95% percentile interval of the difference
    high: float
    p_value: float  # two-sided: 2 x the smaller share of replicates on either side of 0
    significant: bool  # the interval excludes 0
    seeds_a: int
    seeds_b: int
    examples: int
    replicates: int


def metric_of(task: Task, split: str) -> tuple[str, Score]:
    """The task's primary metric on one dev split, as a function of (predictions, labels)."""
    name = task.primary
    if split in SPLIT_SUFFIX:  # MNLI: accuracy_m on dev_matched, accuracy_mm on dev_mismatched
        name = task.primary.removesuffix(SPLIT_SUFFIX["dev_matched"]) + SPLIT_SUFFIX[split]
    return name, lambda predictions, labels: _scores(task, predictions, labels, split)[name]


def rowwise(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Metric `name` on every row of (replicates, examples) predictions and labels at once, in percent: the
    bootstrap's fast path, equal row by row to kd_core.glue.metrics' scikit-learn and scipy values (tested)."""
    base = name.removesuffix("_mm").removesuffix("_m")

    def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant row is undefined (NaN), as in scipy
            return 100 * (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))

    def counts(p: np.ndarray, y: np.ndarray):
        return [((p == a) & (y == b)).sum(1).astype(float) for a, b in ((1, 1), (1, 0), (0, 1), (0, 0))]

    def f1(p: np.ndarray, y: np.ndarray) -> np.ndarray:
        tp, fp, fn, _ = counts(p, y)
        return 100 * np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)

    def mcc(p: np.ndarray, y: np.ndarray) -> np.ndarray:
        tp, fp, fn, tn = counts(p, y)
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return 100 * np.divide(tp * tn - fp * fn, denominator, out=np.zeros_like(tp), where=denominator > 0)

    return {"accuracy": lambda p, y: 100 * (p == y).mean(1), "f1": f1, "mcc": mcc, "pearson": pearson,
            "spearman": lambda p, y: pearson(rankdata(p, axis=1), rankdata(y, axis=1))}[base]


@dataclass
class Block:
    """One dev split of one task: its metric, labels and each seed's predictions of A and of B; `weight`
    is its share of the difference (1 for one split; 1/(splits x tasks) inside a macro)."""
    score: Score
    labels: np.ndarray
    a: list[np.ndarray]
    b: list[np.ndarray]
    weight: float = 1.0
    rows: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # the metric over many draws at once


def paired_bootstrap(blocks: list[Block], replicates: int = 2000, seed: int = 0) -> dict[str, float]:
    """The weighted sum over blocks of (mean over A's seeds - mean over B's seeds) of the metric, with its
    95% percentile interval and two-sided p-value; each replicate redraws every block's examples."""
    for block in blocks:
        if any(len(p) != len(block.labels) for p in (*block.a, *block.b)):
            raise UserError("the two models were evaluated on dev sets of different sizes: compare runs on the same data")

    def mean_score(k: Block, side: list[np.ndarray], i: np.ndarray) -> float | np.ndarray:
        if k.rows is not None and i.ndim == 2:  # every replicate at once
            return np.mean([k.rows(p[i], k.labels[i]) for p in side], axis=0)
        return statistics.fmean(k.score(p[i], k.labels[i]) for p in side)

    def diff(draw: list[np.ndarray]):
        return sum(k.weight * (mean_score(k, k.a, i) - mean_score(k, k.b, i)) for k, i in zip(blocks, draw))

    rng = np.random.default_rng(seed)
    picks = [[rng.integers(0, len(k.labels), len(k.labels)) for k in blocks] for _ in range(replicates)]
    if all(k.rows is not None for k in blocks):
        draws = np.asarray(diff([np.stack([pick[j] for pick in picks]) for j in range(len(blocks))]), dtype=float)
    else:
        draws = np.array([diff(pick) for pick in picks])
    draws = draws[np.isfinite(draws)]  # a resample can make a correlation undefined (constant labels)
    observed = diff([np.arange(len(k.labels)) for k in blocks])
    below, above = float(np.mean(draws <= 0)), float(np.mean(draws >= 0))
    low, high = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
    return {"diff": observed, "low": low, "high": high, "p_value": min(1.0, 2 * min(below, above)),
            "significant": bool(low > 0 or high < 0), "replicates": int(len(draws))}


def task_blocks(a: dict, b: dict, name: str, weight: float = 1.0) -> list[Block]:
    """A block per dev split of task `name` from two results.json (chosen cells, finite seeds)."""
    task = get_task(name)
    runs_a, runs_b = finite_runs(a["tasks"][name]), finite_runs(b["tasks"][name])
    if not runs_a or not runs_b:
        raise UserError(f"{name}: no finished run with per-example predictions in "
                        f"{'the first' if not runs_a else 'the second'} results.json (runs from before "
                        "predictions were kept, or every run diverged): fine-tune again")
    splits = list(runs_a[0]["dev_examples"])
    blocks = []
    for split in splits:
        labels = np.asarray(runs_a[0]["dev_examples"][split]["labels"])
        if not np.array_equal(labels, np.asarray(runs_b[0]["dev_examples"][split]["labels"])):
            raise UserError(f"{name} {split}: the runs' dev labels differ: compare runs on the same dev set")
        preds = [[np.asarray(r["dev_examples"][split]["predictions"]) for r in runs] for runs in (runs_a, runs_b)]
        name, score = metric_of(task, split)
        blocks.append(Block(score, labels, preds[0], preds[1], weight / len(splits), rowwise(name)))
    return blocks


def has_predictions(results: dict, tasks: list[str]) -> bool:
    """Does every task hold finished runs with per-example predictions (a summary of quoted scores does not)?"""
    return all("cells" in results["tasks"].get(t, {}) and finite_runs(results["tasks"][t]) for t in tasks)


def macro_difference(a: dict, b: dict, tasks: list[str], replicates: int = 1000, seed: int = 0) -> dict[str, float]:
    """A - B in the macro over `tasks` of each task's primary metric (mean over its dev splits)."""
    return paired_bootstrap([k for t in tasks for k in task_blocks(a, b, t, 1 / len(tasks))], replicates, seed)


def finite_runs(task_result: dict) -> list[dict]:
    cell = task_result["cells"][task_result["chosen"]]
    return [r for r in cell["runs"] if r.get("status", "ok") == "ok" and "dev_examples" in r]


def compare_results(a: dict, b: dict, replicates: int = 2000, seed: int = 0) -> list[Difference]:
    common = [t for t in a["tasks"] if t in b["tasks"]]
    if not common:
        raise UserError(f"the two runs share no task ({sorted(a['tasks'])} vs {sorted(b['tasks'])})")
    rows = []
    for name in common:
        task = get_task(name)
        for split, block in zip(finite_runs(a["tasks"][name])[0]["dev_examples"], task_blocks(a, b, name)):
            block.weight = 1.0  # each split reported on its own
            per_seed = [[block.score(p, block.labels) for p in side] for side in (block.a, block.b)]
            test = paired_bootstrap([block], replicates, seed)
            rows.append(Difference(name, metric_of(task, split)[0], *mean_std(per_seed[0]), *mean_std(per_seed[1]),
                                   test["diff"], test["low"], test["high"], test["p_value"], test["significant"],
                                   len(block.a), len(block.b), len(block.labels), test["replicates"]))
    return rows


def seed_run_dirs(run_dir: Path, seeds: int) -> list[Path]:
    """The run directories of `seeds` distillation seeds of one row: run_dir, then <run_dir>_seed1, ..."""
    return [run_dir] + [run_dir.with_name(f"{run_dir.name}_seed{k}") for k in range(1, seeds)]


def pool_seeds(results: list[dict], label: str) -> dict:
    """One model's row from runs of the same recipe with different distillation seeds: per task, the runs of
    each result's chosen cell pooled (distillation seeds x fine-tuning seeds), summarised as one cell."""
    tasks = {}
    for name in results[0]["tasks"]:
        runs = [dict(run, source=r["model"]) for r in results for run in r["tasks"][name]["cells"][r["tasks"][name]["chosen"]]["runs"]]
        cell = summarise_cell(get_task(name), runs)
        tasks[name] = {"status": "ok" if cell["metrics"] else "failed", "cells": {"pooled": cell}, "chosen": "pooled",
                       "metrics": cell["metrics"], "combined": cell["combined"], "primary": get_task(name).primary,
                       "n_runs": len(runs), "n_failed": cell["n_failed"]}
    combined = {name: t["combined"]["median"] if t["combined"] else None for name, t in tasks.items()}
    return {"label": label, "model": results[0]["model"], "models": [r["model"] for r in results], "tasks": tasks,
            **glue_macro(combined), "pooled_from": len(results)}


def seeds_of(result: dict) -> int:
    """Finished runs behind a row's score (fine-tuning seeds, times distillation seeds when pooled)."""
    return min(len(finite_runs(task)) for task in result["tasks"].values())


def claims_table(pairs: list[tuple[dict, dict]], tasks: list[str]) -> list[str]:
    """The claims of a table: each (A, B) as A - B in macro over `tasks`, a paired bootstrap over dev examples with
    seeds combined (95% interval, p), and each task's difference (* where its interval excludes 0)."""
    lines = ["| comparison (A - B) | runs A, B | macro A - B | 95% interval | p | significant | "
             "per task A - B (* = interval excludes 0) |", "|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        d = macro_difference(a, b, tasks, replicates=2000)
        per_task = ", ".join(f"{r.task} {r.metric} {r.diff:+.1f}{'*' if r.significant else ''}"
                             for r in compare_results({**a, "tasks": {t: a["tasks"][t] for t in tasks}}, b, 1000))
        lines.append(f"| {a['label']} - {b['label']} | {seeds_of(a)}, {seeds_of(b)} | {d['diff']:+.2f} | "
                     f"[{d['low']:+.2f}, {d['high']:+.2f}] | {d['p_value']:.3f} | {'yes' if d['significant'] else 'no'} | "
                     f"{per_task} |")
    return lines


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown(rows: list[Difference], label_a: str, label_b: str) -> str:
    lines = [f"| task | metric | {label_a} (mean ± std, seeds) | {label_b} (mean ± std, seeds) | difference | 95% interval "
             "| p | significant |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.task} | {r.metric} | {r.a_mean:.2f} ± {r.a_std:.2f} ({r.seeds_a}) | {r.b_mean:.2f} ± "
                     f"{r.b_std:.2f} ({r.seeds_b}) | {r.diff:+.2f} | [{r.low:+.2f}, {r.high:+.2f}] | {r.p_value:.3f} | "
                     f"{'yes' if r.significant else 'no'} |")
    return "\n".join(lines)


def load_results(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise UserError(f"{path}: no results.json; give the --output-dir of `python -m kd_core.glue` or its results.json")
    return json.loads(p.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_core.glue.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="results.json of model A (or its folder)")
    parser.add_argument("b", help="results.json of model B")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the comparison here")
    args = parser.parse_args(argv)

    def work() -> None:
        if args.boot < 100:
            raise UserError(f"--boot {args.boot}: give at least 100 replicates (2000 is usual)")
        a, b = load_results(args.a), load_results(args.b)
        rows = compare_results(a, b, args.boot, args.seed)
        print(markdown(rows, a.get("label", "A"), b.get("label", "B")))
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return exit_code_of(work)


if __name__ == "__main__":
    sys.exit(main())
