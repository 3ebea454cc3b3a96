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

from ..cli import exit_code_of
from ..errors import UserError
from .metrics import SPLIT_SUFFIX, _scores
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


def paired_bootstrap(score: Score, labels: np.ndarray, a: list[np.ndarray], b: list[np.ndarray],
                     replicates: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean over seeds of score(A) minus that of B, with its bootstrap interval and p-value."""
    labels = np.asarray(labels)
    n = len(labels)
    if any(len(p) != n for p in (*a, *b)):
        raise UserError("the two models were evaluated on dev sets of different sizes: compare runs on the same data")

    def diff(idx: np.ndarray) -> float:
        return (statistics.fmean(score(p[idx], labels[idx]) for p in a)
                - statistics.fmean(score(p[idx], labels[idx]) for p in b))

    rng = np.random.default_rng(seed)
    draws = np.array([diff(rng.integers(0, n, n)) for _ in range(replicates)])
    draws = draws[np.isfinite(draws)]  # a resample can make a correlation undefined (constant labels)
    observed = diff(np.arange(n))
    below, above = float(np.mean(draws <= 0)), float(np.mean(draws >= 0))
    low, high = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
    return {"diff": observed, "low": low, "high": high, "p_value": min(1.0, 2 * min(below, above)),
            "significant": bool(low > 0 or high < 0), "replicates": int(len(draws))}


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
        runs_a, runs_b = finite_runs(a["tasks"][name]), finite_runs(b["tasks"][name])
        if not runs_a or not runs_b:
            raise UserError(f"{name}: no finished run with per-example predictions in "
                            f"{'the first' if not runs_a else 'the second'} results.json (runs from before "
                            "predictions were kept, or every run diverged): fine-tune again")
        for split in runs_a[0]["dev_examples"]:
            labels = np.asarray(runs_a[0]["dev_examples"][split]["labels"])
            if not np.array_equal(labels, np.asarray(runs_b[0]["dev_examples"][split]["labels"])):
                raise UserError(f"{name} {split}: the runs' dev labels differ: compare runs on the same dev set")
            preds = [[np.asarray(r["dev_examples"][split]["predictions"]) for r in runs] for runs in (runs_a, runs_b)]
            metric, score = metric_of(task, split)
            per_seed = [[score(p, labels) for p in side] for side in preds]
            test = paired_bootstrap(score, labels, preds[0], preds[1], replicates, seed)
            rows.append(Difference(
                name, metric, statistics.fmean(per_seed[0]), statistics.stdev(per_seed[0]) if len(per_seed[0]) > 1 else 0.0,
                statistics.fmean(per_seed[1]), statistics.stdev(per_seed[1]) if len(per_seed[1]) > 1 else 0.0,
                test["diff"], test["low"], test["high"], test["p_value"], test["significant"], len(runs_a), len(runs_b),
                len(labels), test["replicates"]))
    return rows


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
