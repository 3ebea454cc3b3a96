"""GLUE harness: metrics, task data, regression, the resumable grid, reports."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import needs_shared_data
from kd_core.toy import tiny_bert_teacher, write_tiny_glue
from kd_core.errors import UserError
from kd_core.glue import grid as grid_module
from kd_core.glue.data import GlueFormatError, read_tsv
from kd_core.glue.finetune import FinetuneConfig
from kd_core.glue.grid import GridConfig, run_grid
from kd_core.glue.metrics import combined_score, split_metrics
from kd_core.glue.report import markdown_table
from kd_core.glue.tasks import TASKS, get_task


# ---- metrics against hand formulas ----------------------------------------------------------------
def test_classification_metrics_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    preds = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 3, 3, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert split_metrics(TASKS["cola"], preds, labels) == {"mcc": pytest.approx(100 * mcc)}
    m = split_metrics(TASKS["mrpc"], preds, labels)
    assert m == {"accuracy": pytest.approx(75.0), "f1": pytest.approx(100 * f1)}
    assert split_metrics(TASKS["mnli"], preds, labels, "dev_mismatched") == {"accuracy_mm": pytest.approx(75.0)}


def test_regression_metrics_by_hand():
    x = np.array([0.5, 1.0, 2.5, 3.0, 4.5])
    y = np.array([1.0, 1.5, 2.0, 4.0, 5.0])
    xm, ym = x - x.mean(), y - y.mean()
    pearson = (xm * ym).sum() / math.sqrt((xm ** 2).sum() * (ym ** 2).sum())
    m = split_metrics(TASKS["stsb"], x, y)
    assert m["pearson"] == pytest.approx(100 * pearson)
    assert m["spearman"] == pytest.approx(100.0)  # same ranks


def test_combined_and_macro_scores():
    assert combined_score(TASKS["mrpc"], {"f1": 90.0, "accuracy": 80.0}) == 85.0
    assert combined_score(TASKS["mnli"], {"accuracy_m": 80.0, "accuracy_mm": 82.0}) == 81.0
    from kd_core.glue.results import Cell, ModelResults, Run, TaskResult

    def task(name, scores):
        return TaskResult(name, {"c": Cell([Run(i, {"m": s}, s) for i, s in enumerate(scores)])})
    results = ModelResults("m", "m", {"rte": task("rte", [58.0, 62.0]), "mrpc": task("mrpc", [80.0]),
                                      "wnli": task("wnli", [40.0, 40.0])})
    assert (results.score, results.score_without_wnli) == (pytest.approx(60.0), pytest.approx(70.0))


# ---- data -----------------------------------------------------------------------------------------
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_label_mapping_and_columns(tmp_path):
    _write(tmp_path / "MNLI" / "dev_matched.tsv", "index\tx\tsentence1\tsentence2\tgold_label\n"
           "0\t.\tA man sleeps.\tA person rests.\tentailment\n1\t.\tA b.\tC d.\tneutral\n")
    ex = read_tsv(get_task("mnli"), tmp_path, "dev_matched")
    assert [e.label for e in ex] == [1.0, 2.0]  # contradiction, entailment, neutral
    assert ex[0].text_a == "A man sleeps." and ex[0].text_b == "A person rests."
    _write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tRode sailors.\n")
    cola = read_tsv(get_task("cola"), tmp_path, "train")
    assert [(e.text_a, e.label, e.text_b) for e in cola] == [("The sailors rode the breeze.", 1.0, None),
                                                             ("Rode sailors.", 0.0, None)]
    _write(tmp_path / "STS-B" / "dev.tsv", "index\tsentence1\tsentence2\tscore\n0\ta\tb\t3.8\n")
    assert read_tsv(get_task("sts-b"), tmp_path, "dev")[0].label == pytest.approx(3.8)


def test_malformed_rows_and_missing_files_are_clear(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    with pytest.raises(GlueFormatError, match=r"RTE/train.tsv:3: expected 4 tab-separated columns, got 3"):
        read_tsv(get_task("rte"), tmp_path, "train")
    _write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(GlueFormatError, match=r"dev.tsv:2: label 'maybe' is not one of"):
        read_tsv(get_task("rte"), tmp_path, "dev")
    with pytest.raises(UserError, match=r"expected .*QNLI/train.tsv"):
        read_tsv(get_task("qnli"), tmp_path, "train")
    with pytest.raises(UserError, match="unknown GLUE task"):
        get_task("squad")


@pytest.mark.parametrize("name,n_train,n_dev", [("cola", 8551, 1043), ("sst2", 67349, 872), ("mrpc", 3668, 408),
                                                ("stsb", 5749, 1500), ("rte", 2490, 277), ("wnli", 635, 71)])
def test_real_glue_files_parse(name, n_train, n_dev):
    glue = needs_shared_data("glue")
    task = get_task(name)
    train, dev = read_tsv(task, glue, "train"), read_tsv(task, glue, "dev")
    assert (len(train), len(dev)) == (n_train, n_dev)
    if task.is_regression:
        assert 0.0 <= min(e.label for e in dev) and max(e.label for e in dev) <= 5.0
    else:
        assert {e.label for e in train} == set(map(float, range(task.num_labels)))


# ---- fine-tuning grid -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("glue_model")
    tiny_bert_teacher(d, tiny_tokenizer, layers=2)
    return d


@pytest.fixture(scope="module")
def tiny_glue(tmp_path_factory):
    """A learnable RTE-shaped task and an STS-B-shaped regression task."""
    return write_tiny_glue(tmp_path_factory.mktemp("glue"), n_rte=160, n_stsb=96, n_dev=40)


def test_stsb_is_regression(tiny_model, tiny_glue, tmp_path):
    grid = GridConfig(lrs=[1e-3], batch_sizes=[16], seeds=1, finetune=FinetuneConfig(epochs=2))
    results = run_grid(str(tiny_model), [get_task("stsb")], str(tiny_glue), grid, tmp_path / "out")
    run = results.tasks["stsb"].cells["lr0.001_bs16"].runs[0].to_json()
    assert set(run["metrics"]) == {"pearson", "spearman"}
    assert -100 <= run["metrics"]["pearson"] <= 100


def test_task_epochs_override_the_epochs_of_their_task_only(tiny_model, tiny_glue, tmp_path):
    grid = GridConfig(lrs=[1e-3], batch_sizes=[16], seeds=1, finetune=FinetuneConfig(epochs=1, task_epochs={"stsb": 2}))
    results = run_grid(str(tiny_model), [get_task("rte"), get_task("stsb")], str(tiny_glue), grid, tmp_path / "out")
    steps = {t: results.tasks[t].cells["lr0.001_bs16"].runs[0].record["steps"] for t in ("rte", "stsb")}
    assert steps == {"rte": 160 // 16, "stsb": 2 * (96 // 16)}
    for bad, message in [({"sts-b": 3.0}, "task_epochs names 'sts-b', not a GLUE task"),
                         ({"stsb": 0.0}, "task_epochs.stsb is 0.0, give a positive number")]:
        grid.finetune.task_epochs = bad
        with pytest.raises(UserError, match=message):
            run_grid(str(tiny_model), [get_task("rte")], str(tiny_glue), grid, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything is written


class Killed(Exception):
    """Stands for a kill: KeyboardInterrupt would stop pytest itself."""


def test_grid_resumes_without_redoing_finished_runs(tiny_model, tiny_glue, tmp_path, monkeypatch):
    grid = GridConfig(lrs=[1e-3, 3e-3], batch_sizes=[16], seeds=2, finetune=FinetuneConfig(epochs=3))
    calls = []
    real = grid_module.finetune_and_evaluate

    def counting(model, task, glue_dir, cfg, seed, out, cache):
        calls.append((cfg.lr, seed))
        if len(calls) == 3:
            raise Killed("killed after the first cell")
        return real(model, task, glue_dir, cfg, seed, out, cache)

    monkeypatch.setattr(grid_module, "finetune_and_evaluate", counting)
    out = tmp_path / "grid"
    with pytest.raises(Killed):
        run_grid(str(tiny_model), [get_task("rte")], str(tiny_glue), grid, out)
    assert calls == [(1e-3, 0), (1e-3, 1), (3e-3, 0)]
    calls.clear()
    results = run_grid(str(tiny_model), [get_task("rte")], str(tiny_glue), grid, out)
    assert calls == [(3e-3, 0), (3e-3, 1)]  # the finished cell was loaded, not redone
    rte = results.tasks["rte"]
    assert set(rte.cells) == {"lr0.001_bs16", "lr0.003_bs16"}
    assert rte.chosen == max(rte.cells, key=lambda c: rte.cells[c].score)
    assert rte.metrics["accuracy"]["mean"] > 60  # the task is learnable: above chance on dev
    saved = json.loads((out / "results.json").read_text())
    assert saved["provenance"]["commit"] and saved["tasks"]["rte"]["chosen"] == rte.chosen
    table = (out / "results.md").read_text()
    assert "RTE acc" in table and f"{rte.metrics['accuracy']['mean']:.1f}" in table


def _mrpc_runs(label: str, scores: list[tuple[float, float]]):
    from kd_core.glue.results import Cell, ModelResults, Run, TaskResult

    runs = [Run(i, {"f1": f1, "accuracy": acc}, (f1 + acc) / 2) for i, (f1, acc) in enumerate(scores)]
    return ModelResults(label, label, {"mrpc": TaskResult("mrpc", {"c": Cell(runs)})})


def test_markdown_table_with_reference_rows():
    result = _mrpc_runs("ours", [(84.0, 80.0), (85.0, 80.0), (86.0, 80.0)])
    table = markdown_table([result], [{"label": "DistilBERT (paper, quoted)", "scores": {"mrpc": {"f1": 87.5},
                                                                                          "cola": {"mcc": 51.3}}}])
    lines = table.splitlines()
    assert lines[0] == "| model | CoLA MCC | MRPC F1 | MRPC acc | score | runs |"
    assert lines[2] == "| ours | – | 85.0 ± 1.0 | 80.0 ± 0.0 | 82.5 ± 0.5 | 3 |"  # means over 3 seeds; the score's std over runs
    assert lines[3] == "| DistilBERT (paper, quoted) | 51.3 | 87.5 | – | – | – |"


# ---- task-specific distillation ---------------------------------------------------------------------
def _classifier(directory, tokenizer, layers, seed, num_labels=2):
    from transformers import AutoModelForSequenceClassification

    tiny_bert_teacher(directory, tokenizer, layers=layers, seed=seed)
    model = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=num_labels)
    model.save_pretrained(directory)
    return model


def test_task_distillation_terms_match_references(tmp_path, tiny_tokenizer):
    from kd_core.glue.distill import TaskDistillConfig, TaskDistillObjective
    from test_losses import ref_kd_kl

    teacher = _classifier(tmp_path / "t", tiny_tokenizer, 4, seed=1)
    student = _classifier(tmp_path / "s", tiny_tokenizer, 2, seed=2)
    enc = tiny_tokenizer(["the king saw the whale", "a bad film"], ["the sea", "a good movie"], padding=True,
                         return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([1, 0])}
    weights = {"pred": 1.0, "hard": 1.0, "hid": 1.0, "att": 1.0, "emb": 1.0}
    obj = TaskDistillObjective(student, teacher, get_task("rte"), weights, TaskDistillConfig(temperature=2.0))
    obj.eval()
    terms = obj(batch)
    with torch.no_grad():
        s, t = student(**enc).logits, teacher(**enc).logits
    assert terms["pred"].item() == pytest.approx(ref_kd_kl(s[None], t[None], torch.ones(1, 2, dtype=torch.bool), 2.0),
                                                 rel=1e-4)
    assert terms["hard"].item() == pytest.approx(torch.nn.functional.cross_entropy(s, batch["labels"]).item(), rel=1e-5)
    assert set(terms) == set(weights)
    mse = TaskDistillObjective(student, teacher, get_task("rte"), {"pred": 1.0}, TaskDistillConfig(pred_loss="mse"))
    assert mse(batch)["pred"].item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-5)
    same = TaskDistillObjective(teacher, teacher, get_task("rte"), weights, TaskDistillConfig(layers="first_k"))
    same.eval()
    for name, value in same(batch).items():
        if name != "hard":
            assert value.item() == pytest.approx(0.0, abs=1e-6), name
    from kd_core.glue.distill import check_task_teacher

    with pytest.raises(UserError, match="needs 1"):
        check_task_teacher(str(tmp_path / "t"), get_task("stsb"))
    tiny_bert_teacher(tmp_path / "mlm", tiny_tokenizer, layers=1)  # an MLM checkpoint: no task head
    with pytest.raises(UserError, match="is not fine-tuned on a task"):
        check_task_teacher(str(tmp_path / "mlm"), get_task("rte"))


def test_two_stage_distillation_through_the_grid(tiny_glue, tmp_path, tiny_tokenizer):
    from kd_core.glue.distill import TaskDistillConfig

    _classifier(tmp_path / "teacher-rte", tiny_tokenizer, 4, seed=1)
    _classifier(tmp_path / "student", tiny_tokenizer, 2, seed=2)
    grid = GridConfig(lrs=[1e-3], batch_sizes=[16], seeds=1, finetune=FinetuneConfig(epochs=1),
                      teacher=str(tmp_path / "teacher-{task}"),
                      distill=TaskDistillConfig(mode="two-stage", stage1_epochs=1,
                                                        loss_weights={"pred": 1, "hard": 0.5, "emb": 1, "hid": 1, "att": 1}))
    results = run_grid(str(tmp_path / "student"), [get_task("rte")], str(tiny_glue), grid, tmp_path / "out")
    run = results.tasks["rte"].cells["lr0.001_bs16"].runs[0].to_json()
    assert run["teacher"].endswith("teacher-rte")
    assert set(run["stages"]["stage1"]["final"]) == {"loss/emb", "loss/hid", "loss/att", "loss/total"}
    assert set(run["stages"]["stage2"]["final"]) == {"loss/pred", "loss/hard", "loss/total"}
    assert (tmp_path / "out" / "rte" / "lr0.001_bs16" / "seed0" / "stage1" / "metrics.jsonl").is_file()


def test_merge_results_makes_one_table(tmp_path):
    from kd_core.glue.report import merge_results

    paths = []
    for label, acc in (("teacher", 70.0), ("student", 65.0)):
        result = {"label": label, "model": label, "tasks": {"rte": {"chosen": "c", "cells": {"c": {"runs": [
            {"seed": 0, "metrics": {"accuracy": acc}, "combined": acc}]}}}}}
        (tmp_path / f"{label}.json").write_text(json.dumps(result))
        paths.append(tmp_path / f"{label}.json")
    lines = merge_results(paths).splitlines()
    assert lines[0] == "| model | RTE acc | score | runs |"
    assert lines[2:] == ["| teacher | 70.0 | 70.0 | 1 |", "| student | 65.0 | 65.0 | 1 |"]


def test_finetune_train_dict_cannot_silently_override_the_fine_tuning_config():
    from kd_core.glue.finetune import FinetuneConfig, train_config

    assert train_config(FinetuneConfig(train={"max_grad_norm": 0.5}), 320, 0).max_grad_norm == 0.5
    with pytest.raises(UserError, match=r"finetune.train sets \['lr'\]"):
        train_config(FinetuneConfig(lr=5e-5, train={"lr": 1e-3}), 320, 0)
