"""GLUE harness faults: diverged runs are recorded and skipped, failed tasks are reported, bad CLI inputs
get one `error:` line and exit 2."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from kd_core.toy import tiny_bert_teacher, write_tiny_glue
from kd_core.glue import finetune as finetune_module
from kd_core.glue import grid as grid_module
from kd_core.glue.finetune import FinetuneConfig
from kd_core.glue.grid import GridConfig, run_grid
from kd_core.glue.metrics import DivergedError, split_metrics
from kd_core.glue.results import Cell, ModelResults, Run, TaskResult, choose
from kd_core.glue.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[1]
RTE_HEADER = "index\tsentence1\tsentence2\tlabel"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _rte_rows(n: int) -> list[str]:
    return [f"{i}\tthe king saw the whale\t{'the king saw the whale' if i % 2 == 0 else 'a bad film'}\t"
            f"{'entailment' if i % 2 == 0 else 'not_entailment'}" for i in range(n)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("model")
    tiny_bert_teacher(d, tiny_tokenizer, layers=1)  # 64 positions
    return d


@pytest.fixture(scope="module")
def tiny_glue(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("glue"), n_rte=64, n_stsb=48, n_dev=16)


# ---- divergence through the real training path ---------------------------------------------------------
def test_diverged_cell_is_recorded_the_finite_cell_chosen_and_not_retried(tiny_model, tiny_glue, tmp_path,
                                                                         monkeypatch, capsys):
    # lr 1e6 makes the loss non-finite within a few steps: the engine raises NonFiniteLossError
    grid = GridConfig(lrs=[1e6, 1e-3], batch_sizes=[8], seeds=2, finetune=FinetuneConfig(epochs=2, max_len=32))
    out = tmp_path / "grid"
    results = run_grid(str(tiny_model), [get_task("rte")], str(tiny_glue), grid, out)
    rte = results.tasks["rte"]
    bad, good = rte.cells["lr1e+06_bs8"], rte.cells["lr0.001_bs8"]
    assert (len(bad.failed), bad.metrics(), len(good.failed)) == (2, None, 0)
    assert [r.seed for r in bad.failed] == [0, 1] and "finite" in bad.failed[0].error
    assert rte.chosen == "lr0.001_bs8" and (rte.n_runs, rte.n_failed) == (4, 2)
    assert math.isfinite(results.score) and results.score == pytest.approx(np.mean([r.combined for r in good.runs]))
    record = json.loads((out / "rte" / "lr1e+06_bs8" / "seed0" / "result.json").read_text())
    assert record["status"] == "diverged" and "\n" not in record["error"]
    note = "task rte: 2 of 4 runs diverged (lr1e+06_bs8 seeds 0, 1"
    assert note in capsys.readouterr().out
    assert note in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["tasks"]["rte"]["cells"]["lr1e+06_bs8"]["n_failed"] == 2

    def no_training(*args):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(grid_module, "finetune_and_evaluate", no_training)
    again = run_grid(str(tiny_model), [get_task("rte")], str(tiny_glue), grid, out)
    assert again.tasks["rte"].chosen == "lr0.001_bs8" and again.tasks["rte"].n_failed == 2
    assert "(diverged; delete its result.json to retry)" in capsys.readouterr().out


def test_nan_predictions_fail_the_task_and_the_macro_says_why(tiny_model, tiny_glue, tmp_path, monkeypatch):
    real = finetune_module.train_and_evaluate

    def poisoned(objective, tokenizer, task, *args):
        run = real(objective, tokenizer, task, *args)
        if task.name == "rte":  # trained fine, then NaN weights: every RTE prediction is NaN
            objective.student.classifier.weight.data.fill_(float("nan"))
        return run

    monkeypatch.setattr(finetune_module, "train_and_evaluate", poisoned)
    grid = GridConfig(lrs=[1e-3], batch_sizes=[8], seeds=1, finetune=FinetuneConfig(epochs=2, max_len=32))
    out = tmp_path / "grid"
    results = run_grid(str(tiny_model), [get_task("rte"), get_task("stsb")], str(tiny_glue), grid, out)
    rte, stsb = results.tasks["rte"], results.tasks["stsb"]
    assert (rte.chosen, rte.metrics, rte.score) == (None, None, None)
    assert "predictions are not finite" in rte.cells["lr0.001_bs8"].failed[0].error
    assert math.isfinite(stsb.score)
    assert results.score is None and results.score_without_wnli is None
    assert "rte" in results.score_note()
    text = (out / "results.json").read_text()
    assert "NaN" not in text and json.loads(text)["tasks"]["rte"]["status"] == "failed"
    table = (out / "results.md").read_text().splitlines()
    assert table[0].endswith("| RTE acc | score | runs |") and table[2].endswith("| failed | – | 0 |")
    assert "task rte: 1 of 1 runs diverged (lr0.001_bs8 seed 0; errors in results.json): no score" in table[-1]


# ---- the pieces ----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")  # the error says it better
def test_nan_or_undefined_scores_are_divergence_not_a_crash():
    labels = np.array([0.0, 1.0, 1.0, 0.0])
    for task in ("cola", "mrpc", "stsb"):
        with pytest.raises(DivergedError, match="2 of 4 predictions are not finite"):
            split_metrics(TASKS[task], np.array([0.0, np.nan, 1.0, np.nan]), labels)
    with pytest.raises(DivergedError, match="pearson, spearman undefined"):  # constant regression output
        split_metrics(TASKS["stsb"], np.full(4, 2.5), np.array([1.0, 2.0, 3.0, 4.0]))


def _run(seed: int, accuracy: float | None) -> Run:
    if accuracy is None:
        return Run.from_json({"status": "diverged", "error": "non-finite", "seed": seed})
    return Run.from_json({"status": "ok", "seed": seed, "metrics": {"accuracy": accuracy}, "combined": accuracy})


def test_a_cell_with_a_failed_seed_ranks_below_every_cell_without_one():
    cells = {"stable": Cell([_run(0, 69.0), _run(1, 69.5), _run(2, 69.2)]),
             "one_failed": Cell([_run(0, 72.0), _run(1, 71.0), _run(2, None)]),
             "lucky": Cell([_run(0, 90.0), _run(1, None), _run(2, None)]),
             "dead": Cell([_run(0, None), _run(1, None), _run(2, None)]),
             "old_nan": Cell([Run.from_json({"seed": 0, "metrics": {"accuracy": math.nan}, "combined": math.nan})])}
    assert cells["one_failed"].metrics()["accuracy"]["mean"] == 71.5  # over the finite seeds
    assert (len(cells["lucky"].failed), cells["dead"].metrics(), len(cells["old_nan"].failed)) == (2, None, 1)
    assert choose(cells) == "stable"  # 72/71 and a diverged seed lose to a cell that never diverged
    assert choose({k: cells[k] for k in ("one_failed", "lucky")}) == "lucky"  # both failed: by score, 90 > 71.5
    assert choose({k: cells[k] for k in ("lucky", "dead")}) == "lucky"
    assert choose({k: cells[k] for k in ("dead", "old_nan")}) is None


def test_score_is_none_with_the_reason_when_a_task_failed():
    ok = TaskResult("rte", {"c": Cell([_run(0, 60.0), _run(1, 62.0)])})
    dead = TaskResult("wnli", {"c": Cell([_run(0, None)])})
    results = ModelResults("m", "m", {"rte": ok, "wnli": dead})
    assert (results.score, results.score_without_wnli) == (None, 61.0)
    assert results.score_note() == "not computed: every run of wnli diverged"
    saved = results.to_json()
    assert (saved["glue_macro"], saved["glue_macro_without_wnli"], saved["tasks"]["wnli"]["status"]) == (None, 61.0, "failed")


# ---- the CLI's bad inputs --------------------------------------------------------------------------------
# (case, arguments added to a valid command line, a fragment the one error line must hold)
BAD_INPUTS = [
    ("seeds_zero", ["--seeds", "0"], "--seeds"),
    ("seeds_negative", ["--seeds=-2"], "--seeds"),
    ("lrs_empty", ["--lrs="], "--lrs"),
    ("lr_zero", ["--lrs=0"], "--lrs"),
    ("lr_negative", ["--lrs=1e-3,-1e-5"], "--lrs"),
    ("batch_sizes_empty", ["--batch-sizes="], "--batch-sizes"),
    ("batch_size_zero", ["--batch-sizes=0"], "--batch-sizes"),
    ("batch_over_train_set", ["--batch-sizes=128"], "fewer than one batch of 128"),
    ("epochs_zero", ["--epochs=0"], "--epochs"),
    ("epochs_negative", ["--epochs=-1"], "--epochs"),
    ("task_epochs_malformed", ["--task-epochs", "rte"], "give task=epochs pairs, e.g. stsb=3,mrpc=2"),
    ("task_epochs_unknown_task", ["--task-epochs", "sts-b=3"], "task_epochs names 'sts-b', not a GLUE task"),
    ("task_unknown", ["--tasks", "squad"], "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"),
    ("tasks_empty", ["--tasks", ","], "--tasks"),
    ("dev_header_only", ["--glue-dir", "{root}/header_only"], "dev.tsv: no examples"),
    ("train_zero_bytes", ["--glue-dir", "{root}/zero_bytes"], "train.tsv: no examples"),
    ("glue_dir_missing", ["--glue-dir", "{root}/nowhere"], "does not exist"),
    ("task_folder_missing", ["--glue-dir", "{root}/no_rte"], "no folder"),
    ("malformed_row", ["--glue-dir", "{root}/malformed"], "dev.tsv:10: expected 4 tab-separated columns, got 3"),
    ("max_len_over_positions", ["--max-len", "100"], "over the 64 positions"),
    ("model_missing", ["--model", "{root}/no_model"], "cannot load model"),
]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_model) -> dict[str, subprocess.CompletedProcess]:
    """Every bad command line, run as a real `python -m kd_core.glue`, two at a time (imports dominate)."""
    root = tmp_path_factory.mktemp("cli")
    rows = _rte_rows(32) + [f"32\t{'the king saw the whale ' * 20}\ta bad film\tnot_entailment"]  # > 64 tokens
    train, dev = "\n".join([RTE_HEADER, *rows]) + "\n", "\n".join([RTE_HEADER, *rows[:8]]) + "\n"
    for name, train_text, dev_text in [("good", train, dev), ("header_only", train, RTE_HEADER + "\n"),
                                       ("zero_bytes", "", dev), ("malformed", train, dev + "9\ta\tb\n")]:
        _write(root / name / "RTE" / "train.tsv", train_text)
        _write(root / name / "RTE" / "dev.tsv", dev_text)
    _write(root / "no_rte" / "MRPC" / "train.tsv", "")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    valid = ["--model", str(tiny_model), "--tasks", "rte", "--glue-dir", f"{root}/good", "--lrs", "1e-3",
             "--batch-sizes", "8", "--seeds", "1", "--epochs", "1", "--max-len", "32"]

    def run(case) -> subprocess.CompletedProcess:
        name, extra, _ = case
        argv = valid + [a.format(root=root) for a in extra] + ["--output-dir", str(root / "out" / name)]
        return subprocess.run([sys.executable, "-m", "kd_core.glue", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip((c[0] for c in BAD_INPUTS), pool.map(run, BAD_INPUTS)))


@pytest.mark.slow
@pytest.mark.parametrize("case,extra,fragment", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_cli_input_is_one_error_line_and_exit_2(cli_runs, case, extra, fragment):
    proc = cli_runs[case]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0]


def test_a_reused_output_dir_with_other_settings_is_refused_not_silently_loaded(tiny_model, tmp_path, tiny_tokenizer):
    """The real CLI: a finished run is reused only with the settings it was made with (epochs, model)."""
    _write(tmp_path / "glue" / "RTE" / "train.tsv", "\n".join([RTE_HEADER, *_rte_rows(32)]) + "\n")
    _write(tmp_path / "glue" / "RTE" / "dev.tsv", "\n".join([RTE_HEADER, *_rte_rows(8)]) + "\n")
    other_model = tmp_path / "other_model"
    tiny_bert_teacher(other_model, tiny_tokenizer, layers=1, seed=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"

    def glue(model, epochs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kd_core.glue", "--model", str(model), "--tasks", "rte",
                               "--glue-dir", str(tmp_path / "glue"), "--lrs", "1e-3", "--batch-sizes", "8", "--seeds",
                               "1", "--epochs", str(epochs), "--max-len", "32", "--output-dir", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert glue(tiny_model, 1).returncode == 0
    result = out / "rte" / "lr0.001_bs8" / "seed0" / "result.json"
    before = result.read_bytes()
    assert json.loads(before)["settings"]["finetune"]["epochs"] == 1.0
    again = glue(tiny_model, 1)
    assert again.returncode == 0 and "done before, loaded" in again.stdout
    for model, epochs, difference in [(tiny_model, 2, "finetune.epochs: 1.0 then, 2.0 now"),
                                      (other_model, 1, f"model: '{tiny_model.resolve()}' then, '{other_model.resolve()}' now")]:
        proc = glue(model, epochs)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert difference in lines[0] and "use a new --output-dir, or delete that file" in lines[0]
        assert result.read_bytes() == before  # the finished run is untouched
