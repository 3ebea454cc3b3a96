"""The paired bootstrap against hand-computed cases, and `python -m kd_core.glue.compare` on real runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kd_core.glue.compare import Block, compare_results, macro_difference, main, metric_of, paired_bootstrap, rowwise
from kd_core.glue.grid import GridConfig, run_grid
from kd_core.glue.results import Cell, ModelResults, Run, TaskResult, load_results
from kd_core.glue.tasks import get_task
from kd_core.toy import tiny_bert_teacher, write_tiny_glue

ACCURACY = metric_of(get_task("rte"), "dev")[1]


def test_two_examples_match_the_exact_bootstrap_distribution():
    """A right on example 0 only, B on neither. Resamples of 2 examples: {0,0} w.p. 1/4 (A - B = 100),
    {0,1} w.p. 1/2 (50), {1,1} w.p. 1/4 (0): observed 50, 95% interval [0, 100], P(d <= 0) = 1/4, so
    the two-sided p is 2 x 1/4 = 0.5, and the interval does not exclude 0."""
    labels = np.array([1, 1])
    out = paired_bootstrap([Block(ACCURACY, labels, [np.array([1, 0])], [np.array([0, 0])], rows=rowwise("accuracy"))],
                           replicates=20000)
    assert out["diff"] == 50.0
    assert (out["low"], out["high"]) == (0.0, 100.0)
    assert out["p_value"] == pytest.approx(0.5, abs=0.02)
    assert out["significant"] is False


def test_a_real_difference_is_significant_and_no_difference_is_not():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    perfect, coin = labels.copy(), rng.integers(0, 2, 400)
    strong = paired_bootstrap([Block(ACCURACY, labels, [perfect], [coin])], replicates=1000)
    assert strong["significant"] and strong["low"] > 40 and strong["p_value"] <= 1 / 1000 + 1e-12
    same = paired_bootstrap([Block(ACCURACY, labels, [coin], [coin])], replicates=1000)
    assert same["diff"] == 0 and not same["significant"] and same["p_value"] == 1.0


def test_each_dev_split_compares_its_own_primary_metric():
    assert metric_of(get_task("mnli"), "dev_matched")[0] == "accuracy_m"
    assert metric_of(get_task("mnli"), "dev_mismatched")[0] == "accuracy_mm"
    assert metric_of(get_task("mrpc"), "dev")[0] == "f1/accuracy"  # the task's score: the mean of its metrics


def test_seeds_are_combined_by_their_mean():
    labels = np.array([1, 0, 1, 0])
    a = [np.array([1, 0, 1, 0]), np.array([1, 0, 0, 0])]  # 100% and 75%
    b = [np.array([0, 0, 0, 0])]  # 50%
    assert paired_bootstrap([Block(ACCURACY, labels, a, b)], replicates=200)["diff"] == pytest.approx(37.5)


@pytest.mark.slow
def test_compare_cli_on_two_fine_tuned_models(tiny_tokenizer, tmp_path, capsys):
    glue = write_tiny_glue(tmp_path / "glue", n_rte=64, n_stsb=48, n_dev=16)
    grid = GridConfig(lrs=[1e-3], batch_sizes=[16], seeds=2)
    grid.finetune.epochs, grid.finetune.max_len = 2.0, 32
    for name, seed in (("a", 0), ("b", 1)):
        tiny_bert_teacher(tmp_path / name, tiny_tokenizer, layers=1, seed=seed)
        run_grid(str(tmp_path / name), [get_task("rte"), get_task("stsb")], str(glue), grid, tmp_path / f"glue_{name}")
    a = load_results(tmp_path / "glue_a")
    assert len(a.tasks["rte"].runs[0].dev("dev")[0]) == 16
    rows = compare_results(a, a, replicates=200)
    assert [(r.task, r.metric, r.diff, r.significant) for r in rows] == [("rte", "accuracy", 0.0, False),
                                                                        ("stsb", "pearson/spearman", 0.0, False)]
    b = load_results(tmp_path / "glue_b" / "results.json")
    macro = macro_difference(a, b, ["rte", "stsb"], replicates=200)
    per_task = {r.task: r.diff for r in compare_results(a, b, replicates=200)}
    assert macro["diff"] == pytest.approx((per_task["rte"] + per_task["stsb"]) / 2)
    assert macro["diff"] == pytest.approx(a.score - b.score)  # the claims compare the one GLUE score
    assert main([str(tmp_path / "glue_a"), str(tmp_path / "glue_b"), "--boot", "200",
                 "--json", str(tmp_path / "cmp.json")]) == 0
    table = capsys.readouterr().out
    assert "| rte | accuracy |" in table and "| stsb | pearson/spearman |" in table and "(2)" in table
    assert len(json.loads((tmp_path / "cmp.json").read_text())) == 2
    assert main([str(tmp_path / "glue_a"), str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no results.json" in capsys.readouterr().err


@pytest.mark.parametrize("task, split", [("cola", "dev"), ("sst2", "dev"), ("mrpc", "dev"), ("stsb", "dev"),
                                         ("mnli", "dev_mismatched")])
def test_rowwise_metrics_equal_sklearn_and_scipy_row_by_row(task, split):
    """The bootstrap's vectorised metrics against kd_core.glue.metrics (scikit-learn, scipy), rows with ties,
    no positive predictions, and constant predictions included."""
    from kd_core.glue.compare import metric_of, rowwise
    from kd_core.glue.tasks import get_task

    rng = np.random.default_rng(1)
    regression = get_task(task).is_regression
    labels = rng.integers(0, 6, (40, 30)).astype(float) if regression else rng.integers(0, 2, (40, 30)).astype(float)
    predictions = np.round(rng.normal(2.5, 1.5, (40, 30)), 1) if regression else rng.integers(0, 2, (40, 30)).astype(float)
    predictions[0] = 0.0  # no positive prediction (F1 0, MCC 0) / a constant row (correlation undefined)
    name, score = metric_of(get_task(task), split)
    fast = rowwise(name)(predictions, labels)
    slow = np.array([score(p, y) for p, y in zip(predictions, labels)])
    assert np.array_equal(np.isnan(fast), np.isnan(slow))
    np.testing.assert_allclose(fast[~np.isnan(fast)], slow[~np.isnan(slow)], atol=1e-9)


def test_fast_bootstrap_draws_what_the_per_replicate_loop_draws():
    from kd_core.glue.compare import rowwise

    rng = np.random.default_rng(2)
    labels = rng.normal(size=200)
    a = [labels + rng.normal(scale=s, size=200) for s in (0.5, 0.6)]
    b = [labels + rng.normal(scale=1.0, size=200) for _ in range(3)]
    pearson = lambda p, y: float(np.corrcoef(p, y)[0, 1] * 100)
    slow = paired_bootstrap([Block(pearson, labels, a, b)], replicates=300, seed=5)
    fast = paired_bootstrap([Block(pearson, labels, a, b, rows=rowwise("pearson"))], replicates=300, seed=5)
    assert slow.keys() == fast.keys()
    for key in slow:
        assert fast[key] == pytest.approx(slow[key], abs=1e-9), key


# ---- every source of variance: runs (fine-tuning and distillation seeds) as well as dev examples --------------
def _arm(labels: np.ndarray, accuracies: list[float], rng: np.random.Generator, sources: list[str] | None = None):
    """Runs whose predictions are right on about `accuracy` percent of the examples, each its own draw."""
    runs = []
    for i, acc in enumerate(accuracies):
        right = rng.random(len(labels)) < acc / 100
        predictions = np.where(right, labels, 1 - labels)
        runs.append(Run(i, {"accuracy": 100 * float((predictions == labels).mean())},
                        100 * float((predictions == labels).mean()),
                        source=sources[i] if sources else None,
                        record={"dev_examples": {"dev": {"predictions": predictions.tolist(), "labels": labels.tolist()}}}))
    return runs


def _model(label: str, runs: list[Run]) -> ModelResults:
    return ModelResults(label, label, {"sst2": TaskResult("sst2", {"c": Cell(runs)})})


def test_seed_variance_is_counted_a_noisy_difference_is_not_significant():
    """Arms whose seeds spread over ~10 points, A about 4 points above B on 2,000 examples: resampling examples
    alone would call it significant; with the seeds resampled the interval must include 0."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    a = _model("A", _arm(labels, [64.0, 74.0, 84.0], rng))
    b = _model("B", _arm(labels, [60.0, 70.0, 80.0], rng))
    d = macro_difference(a, b, ["sst2"], replicates=2000)
    assert 2.0 < d["diff"] < 6.0
    assert not d["significant"] and d["low"] < 0 < d["high"]
    assert d["sources"] == "dev examples, fine-tuning seeds" and d["mde"] > d["diff"]
    examples_only = paired_bootstrap([Block(ACCURACY, labels, [np.mean([r.dev("dev")[0] for r in a.tasks["sst2"].runs], 0) > 0.5],
                                            [b.tasks["sst2"].runs[1].dev("dev")[0]])], replicates=500)
    assert examples_only["se"] < d["se"] / 2  # the seed term dominates this comparison


def test_a_clear_difference_with_consistent_seeds_is_significant():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 2000)
    a = _model("A", _arm(labels, [80.0, 80.5, 79.5], rng))
    b = _model("B", _arm(labels, [74.0, 74.5, 73.5], rng))
    d = macro_difference(a, b, ["sst2"], replicates=2000)
    assert d["significant"] and d["low"] > 0 and 4.5 < d["diff"] < 7.5 and d["mde"] < d["diff"]


def test_distillation_seeds_are_resampled_as_a_level_of_their_own():
    """Two distillation seeds 8 points apart, 3 tight fine-tuning runs each: as one group the interval would see only
    the spread of 6 runs; by distillation seed it also sees that there are only two distilled models."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 2000)
    accuracies = [70.0, 70.5, 69.5, 78.0, 78.5, 77.5]
    by_seed = _model("A", _arm(labels, accuracies, rng, ["d0"] * 3 + ["d1"] * 3))
    flat = _model("A", [Run(**{**r.__dict__, "source": None}) for r in by_seed.tasks["sst2"].runs])
    b = _model("B", _arm(labels, [72.0, 72.5, 71.5], rng))
    two_level, one_level = (macro_difference(x, b, ["sst2"], replicates=2000) for x in (by_seed, flat))
    assert two_level["diff"] == pytest.approx(one_level["diff"])
    assert two_level["se"] > 1.5 * one_level["se"]
    assert two_level["sources"] == "dev examples, fine-tuning seeds, distillation seeds"


def test_one_run_per_arm_says_its_interval_covers_examples_only():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    d = macro_difference(_model("A", _arm(labels, [80.0], rng)), _model("B", _arm(labels, [70.0], rng)), ["sst2"], 500)
    assert d["sources"].startswith("dev examples only")


def test_planned_mde_counts_seed_and_example_variance():
    from kd_core.glue.compare import planned_mde

    # 2.8 x sqrt(2^2 (1/3 + 1/3) + 2 x 0.8 x 0.2 / 872 x 100^2)
    expected = 2.8 * np.sqrt(4 * (2 / 3) + 2 * 0.8 * 0.2 / 872 * 1e4)
    assert planned_mde(872, 3, 3, seed_std=2.0, accuracy=80.0) == pytest.approx(expected)
    assert planned_mde(8720, 3, 3, 2.0, 80.0) < planned_mde(872, 3, 3, 2.0, 80.0)


def test_compare_cli_given_the_wrong_file_is_one_error_line(tmp_path, capsys):
    """An ablation.json, a metrics.jsonl or binary junk handed to the compare CLI: one `error:` line, exit 2."""
    (tmp_path / "ablation.json").write_text(json.dumps({"points": [], "controls": {}}))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss/total": 3.0}\n{"step": 2, "loss/total": 2.9}\n')
    (tmp_path / "junk.json").write_bytes(b"\x00\xff\xfe binary")
    for bad in ("ablation.json", "metrics.jsonl", "junk.json"):
        assert main([str(tmp_path / bad), str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "is not a results.json" in err[0], err
