"""Is the difference between two models real? A bootstrap that redraws every source of variance.

    python -m kd_core.glue.compare RUN_A/results.json RUN_B/results.json [--boot 2000] [--seed 0]

A score difference between two rows varies with three things: which dev examples were drawn (the dev set is a
sample), which fine-tuning seeds ran, and, for a distilled row, which distillation seeds. Each bootstrap replicate
redraws all three: the dev examples with replacement (the same draw for both models: paired), and for each model
its distillation seeds with replacement, then within each drawn distillation seed its fine-tuning runs with
replacement (a two-stage cluster bootstrap, Davison & Hinkley 1997, section 3.8: resampling at both stages counts
the within-seed variance once more than it occurs, so the interval errs wide, never narrow). Each run's metric is
recomputed on the drawn examples and the drawn runs averaged. The difference A - B (means over all runs, all
examples), its 95% percentile interval, a two-sided p-value and the standard error follow; "significant" only when
the interval excludes 0. The minimum detectable effect is 2.8 standard errors (a two-sided 5% test with 80%
power): a difference below it is "not resolved at this budget", never "no effect". A row with one run cannot show
seed variance: its claims say they cover dev examples only.
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
from .metrics import SPLIT_SUFFIX, _scores
from .results import ModelResults, Run, load_results
from .tasks import Task, get_task

Score = Callable[[np.ndarray, np.ndarray], float]
POWER_Z = 1.96 + 0.84  # two-sided 5% test, 80% power


@dataclass
class Difference:
    task: str
    metric: str
    a_mean: float
    a_std: float
    b_mean: float
    b_std: float
    diff: float  # mean over A's runs minus mean over B's runs
    low: float  # 95% percentile interval of the difference
    high: float
    p_value: float  # two-sided: 2 x the smaller share of replicates on either side of 0
    significant: bool  # the interval excludes 0
    se: float  # bootstrap standard error of the difference
    mde: float  # minimum detectable effect (80% power, 5% two-sided)
    sources: str  # the sources of variance the interval covers
    seeds_a: int
    seeds_b: int
    examples: int
    replicates: int


def metric_of(task: Task, split: str) -> tuple[str, Score]:
    """The task's score on one dev split as a function of (predictions, labels): the mean of its metrics there
    (kd_core.glue.results' score: MRPC F1 and accuracy, STS-B Pearson and Spearman; MNLI's split its accuracy)."""
    names = split_metrics_of(task, split)
    return "/".join(names), lambda predictions, labels: statistics.fmean(
        _scores(task, predictions, labels, split)[n] for n in names)


def split_metrics_of(task: Task, split: str) -> list[str]:
    if split in SPLIT_SUFFIX:  # MNLI: accuracy_m on dev_matched, accuracy_mm on dev_mismatched
        return [task.primary.removesuffix(SPLIT_SUFFIX["dev_matched"]) + SPLIT_SUFFIX[split]]
    return list(task.metrics)


def rowwise(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Metric `name` ("f1/accuracy": their mean) on every row of (replicates, examples) predictions and labels at
    once, in percent: the bootstrap's fast path, equal row by row to kd_core.glue.metrics' scikit-learn and scipy
    values (tested)."""
    if "/" in name:
        parts = [rowwise(n) for n in name.split("/")]
        return lambda p, y: np.mean([f(p, y) for f in parts], axis=0)
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
    """One dev split of one task: its metric, labels and each run's predictions of A and of B; `weight` is its
    share of the difference (1 for one split; 1/(splits x tasks) inside a macro). `groups_a`/`groups_b` name each
    run's distillation seed (None: all one seed); blocks with the same `key` (the dev splits of one task) share
    their run draws, as the same runs predicted them."""
    score: Score
    labels: np.ndarray
    a: list[np.ndarray]
    b: list[np.ndarray]
    weight: float = 1.0
    rows: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # the metric over many draws at once
    key: str = ""
    groups_a: list[str] | None = None
    groups_b: list[str] | None = None
    split: str = "dev"


def run_weights(groups: list[str], group_draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(replicates, runs) counts: each replicate's drawn distillation seeds (`group_draws`, (replicates, seeds)
    indices into the distinct groups) and, within each drawn seed, its runs drawn with replacement."""
    names = list(dict.fromkeys(groups))
    members = [np.flatnonzero(np.asarray(groups) == g) for g in names]
    sizes = np.array([len(m) for m in members])
    padded = np.array([np.pad(m, (0, sizes.max() - len(m))) for m in members])  # (groups, most runs in a group)
    replicates, slots = group_draws.shape
    within = (rng.random((replicates, slots, sizes.max())) * sizes[group_draws][..., None]).astype(int)
    picked = padded[group_draws[..., None], within]  # (replicates, slots, most runs): run indices
    valid = np.arange(sizes.max()) < sizes[group_draws][..., None]
    weights = np.zeros((replicates, len(groups)))
    np.add.at(weights, (np.broadcast_to(np.arange(replicates)[:, None, None], picked.shape)[valid], picked[valid]), 1.0)
    return weights


def sources_of(blocks: list[Block]) -> str:
    """Which sources of variance an interval over these blocks covers."""
    runs = min(min(len(k.a), len(k.b)) for k in blocks)
    seeds = min(len(set(k.groups_a or [""])) for k in blocks), min(len(set(k.groups_b or [""])) for k in blocks)
    if runs < 2:
        return "dev examples only (a row with one run shows no seed variance)"
    return "dev examples, fine-tuning seeds" + (", distillation seeds" if max(seeds) > 1 else "")


def paired_bootstrap(blocks: list[Block], replicates: int = 2000, seed: int = 0) -> dict:
    """The weighted sum over blocks of (mean over A's runs - mean over B's runs) of the metric, with its 95%
    percentile interval, two-sided p-value, standard error and minimum detectable effect; each replicate redraws
    every block's examples (paired) and each model's runs (two stages: distillation seeds, then fine-tuning seeds)."""
    for block in blocks:
        if any(len(p) != len(block.labels) for p in (*block.a, *block.b)):
            raise UserError("the two models were evaluated on dev sets of different sizes: compare runs on the same data")
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, len(k.labels), (replicates, len(k.labels))) for k in blocks]
    weights: dict[tuple[str, str], np.ndarray] = {}
    for side in ("a", "b"):
        groups = {k.key: getattr(k, f"groups_{side}") or [""] * len(getattr(k, side)) for k in blocks}
        n_groups = max(len(set(g)) for g in groups.values())
        group_draws = rng.integers(0, n_groups, (replicates, n_groups))  # shared by every task: one distilled model
        for key, g in groups.items():
            weights[side, key] = run_weights(g, group_draws % len(set(g)), rng)

    def side_scores(k: Block, side: str, pick: np.ndarray) -> np.ndarray:
        """(replicates,) weighted mean over the side's runs of the metric on each replicate's examples."""
        runs = getattr(k, side)
        if k.rows is not None:
            per_run = np.stack([k.rows(p[pick], k.labels[pick]) for p in runs], axis=1)
        else:
            per_run = np.array([[k.score(p[i], k.labels[i]) for p in runs] for i in pick])
        w = weights[side, k.key]
        return (w * per_run).sum(1) / w.sum(1)

    with np.errstate(invalid="ignore"):  # a resample can make a correlation undefined (constant labels): dropped
        draws = sum(k.weight * (side_scores(k, "a", p) - side_scores(k, "b", p)) for k, p in zip(blocks, picks))
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    observed = sum(k.weight * (statistics.fmean(k.score(p, k.labels) for p in k.a)
                               - statistics.fmean(k.score(p, k.labels) for p in k.b)) for k in blocks)
    below, above = float(np.mean(draws <= 0)), float(np.mean(draws >= 0))
    low, high = (float(q) for q in np.percentile(draws, [2.5, 97.5]))
    se = float(np.std(draws, ddof=1))
    return {"diff": float(observed), "low": low, "high": high, "p_value": min(1.0, 2 * min(below, above)),
            "significant": bool(low > 0 or high < 0), "se": se, "mde": POWER_Z * se, "sources": sources_of(blocks),
            "replicates": int(len(draws))}


def planned_mde(n_examples: int, runs_a: int, runs_b: int, seed_std: float, accuracy: float = 75.0) -> float:
    """The smallest accuracy difference (points) a comparison can resolve before it runs: 2.8 standard errors, the
    seed term seed_std^2 (1/runs_a + 1/runs_b) plus the dev-example term of two independent accuracies (an upper
    bound: paired predictions that agree on most examples vary less)."""
    p = accuracy / 100
    example_var = 2 * p * (1 - p) / n_examples * 100 ** 2
    return POWER_Z * float(np.sqrt(seed_std ** 2 * (1 / runs_a + 1 / runs_b) + example_var))


def _groups(runs: list[Run]) -> list[str]:
    return [r.source or "" for r in runs]


def task_blocks(a: ModelResults, b: ModelResults, name: str, weight: float = 1.0) -> list[Block]:
    """A block per dev split of task `name` from two models' results (chosen cells, finite runs)."""
    task = get_task(name)
    runs_a, runs_b = a.tasks[name].runs, b.tasks[name].runs
    missing = [which for which, runs in (("the first", runs_a), ("the second", runs_b))
               if not runs or not all(r.has_predictions for r in runs)]
    if missing:
        raise UserError(f"{name}: no finished run with per-example predictions in {missing[0]} results (runs from "
                        "before predictions were kept, or every run diverged): fine-tune again")
    blocks = []
    splits = list(runs_a[0].record["dev_examples"])
    for split in splits:
        labels = runs_a[0].dev(split)[1]
        if not np.array_equal(labels, runs_b[0].dev(split)[1]):
            raise UserError(f"{name} {split}: the runs' dev labels differ: compare runs on the same dev set")
        metric, score = metric_of(task, split)
        blocks.append(Block(score, labels, [r.dev(split)[0] for r in runs_a], [r.dev(split)[0] for r in runs_b],
                            weight / len(splits), rowwise(metric), name, _groups(runs_a), _groups(runs_b), split))
    return blocks


def macro_difference(a: ModelResults, b: ModelResults, tasks: list[str], replicates: int = 2000,
                     seed: int = 0) -> dict:
    """A - B in the GLUE score over `tasks` (kd_core.glue.results: each task's combined metric, the mean of its dev splits)."""
    return paired_bootstrap([k for t in tasks for k in task_blocks(a, b, t, 1 / len(tasks))], replicates, seed)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare_results(a: ModelResults, b: ModelResults, replicates: int = 2000, seed: int = 0) -> list[Difference]:
    """Each dev split of each task both models have, on its own."""
    common = [t for t in a.tasks if t in b.tasks]
    if not common:
        raise UserError(f"the two runs share no task ({sorted(a.tasks)} vs {sorted(b.tasks)})")
    rows = []
    for name in common:
        for block in task_blocks(a, b, name):
            block.weight = 1.0  # each split reported on its own
            per_run = [[block.score(p, block.labels) for p in side] for side in (block.a, block.b)]
            test = paired_bootstrap([block], replicates, seed)
            rows.append(Difference(name, metric_of(get_task(name), block.split)[0], *mean_std(per_run[0]),
                                   *mean_std(per_run[1]), test["diff"], test["low"], test["high"], test["p_value"],
                                   test["significant"], test["se"], test["mde"], test["sources"], len(block.a),
                                   len(block.b), len(block.labels), test["replicates"]))
    return rows


def verdict(d: dict) -> str:
    """'yes', or 'no (cannot resolve below X)' for a difference whose interval includes 0."""
    return "yes" if d["significant"] else f"no (cannot resolve below {d['mde']:.1f})"


def claims_table(pairs: list[tuple[ModelResults, ModelResults]], tasks: list[str], replicates: int = 2000) -> list[str]:
    """The claims of a table: each (A, B) as A - B in the GLUE score over `tasks` (as kd_core.glue.results defines it), by the
    bootstrap over runs and dev examples (95% interval, p, minimum detectable effect, the sources it covers), and
    each task's difference (* where its own interval excludes 0)."""
    lines = ["| comparison (A - B) | runs A, B | macro A - B | 95% interval | p | detectable (80% power) | "
             "significant | covers | per task A - B (* = interval excludes 0) |", "|---|---|---|---|---|---|---|---|---|"]
    for a, b in pairs:
        d = macro_difference(a, b, tasks, replicates)
        per_task = ", ".join(f"{r.task} {r.metric} {r.diff:+.1f}{'*' if r.significant else ''}"
                             for r in compare_results(a.restricted(tasks), b, max(replicates // 2, 200)))
        lines.append(f"| {a.label} - {b.label} | {a.n_runs}, {b.n_runs} | {d['diff']:+.2f} | "
                     f"[{d['low']:+.2f}, {d['high']:+.2f}] | {d['p_value']:.3f} | {d['mde']:.2f} | {verdict(d)} | "
                     f"{d['sources']} | {per_task} |")
    return lines


def markdown(rows: list[Difference], label_a: str, label_b: str) -> str:
    lines = [f"| task | metric | {label_a} (mean ± std, runs) | {label_b} (mean ± std, runs) | difference | 95% interval "
             "| p | detectable (80% power) | significant | covers |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.task} | {r.metric} | {r.a_mean:.2f} ± {r.a_std:.2f} ({r.seeds_a}) | {r.b_mean:.2f} ± "
                     f"{r.b_std:.2f} ({r.seeds_b}) | {r.diff:+.2f} | [{r.low:+.2f}, {r.high:+.2f}] | {r.p_value:.3f} | "
                     f"{r.mde:.2f} | {'yes' if r.significant else 'no'} | {r.sources} |")
    return "\n".join(lines)


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
        print(markdown(rows, a.label, b.label))
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return exit_code_of(work)


if __name__ == "__main__":
    sys.exit(main())
