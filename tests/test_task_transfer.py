"""Task-specific distillation over a transfer set, through the real `python -m kd_core.glue` CLI: a fine-tuned
teacher saved by --save-model, a student distilled from its soft labels over labelled + unlabelled examples, the
gold-label loss on labelled rows only, and the nonsense a careless user can ask for refused in one line."""
from __future__ import annotations

import json
import math

import pytest
import torch

from kd_core.glue.__main__ import main as glue_main
from kd_core.glue.data import Example
from kd_core.glue.distill import TaskDistillConfig, TaskDistillObjective
from kd_core.glue.finetune import labelled_subset, make_collate
from kd_core.glue.tasks import get_task
from kd_core.glue.transfer import read_transfer_file, transfer_examples
from kd_core.errors import UserError
from kd_core.toy import tiny_bert_teacher, write_tiny_glue


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("transfer")
    glue = write_tiny_glue(root / "glue", n_rte=96, n_stsb=48, n_dev=16)
    tiny_bert_teacher(root / "teacher_base", tiny_tokenizer, layers=2, seed=1)
    tiny_bert_teacher(root / "student", tiny_tokenizer, layers=1, seed=2)
    common = ["--tasks", "rte", "--glue-dir", str(glue), "--lrs", "1e-3", "--batch-sizes", "16", "--epochs", "2",
              "--max-len", "32"]
    assert glue_main(["--model", str(root / "teacher_base"), "--output-dir", str(root / "teacher_glue"), "--seeds", "1",
                      "--save-model", *common]) == 0
    teacher = root / "teacher_glue" / "rte" / "lr0.001_bs16" / "seed0" / "model"
    return root, glue, teacher, common


def test_save_model_makes_a_teacher_and_transfer_examples_train_the_student(setup, capsys):
    root, glue, teacher, common = setup
    assert (teacher / "config.json").is_file() and "ForSequenceClassification" in (teacher / "config.json").read_text()
    saved = json.loads((root / "teacher_glue" / "results.json").read_text())
    assert saved["tasks"]["rte"]["cells"]["lr0.001_bs16"]["runs"][0]["model_dir"] == str(teacher.resolve())
    transfer = root / "unlabelled.txt"
    transfer.write_text("the king saw the whale\tthe king saw the whale\n\na bad film\tthe sea\n")
    out = root / "student_kd"
    assert glue_main(["--model", str(root / "student"), "--output-dir", str(out), "--seeds", "2",
                      "--teacher", str(teacher), "--hard-weight", "1", "--max-train-examples", "32",
                      "--transfer", str(transfer), "--transfer-unlabelled-train", *common]) == 0
    run = json.loads((out / "rte" / "lr0.001_bs16" / "seed0" / "result.json").read_text())
    # 32 labelled of the 96 training rows; the other 64 without labels, and the file's 2 examples
    assert (run["train_examples"], run["transfer_examples"]) == (32, 66)
    assert run["stages"]["pred"]["steps"] == 2 * (98 // 16)  # epochs over labelled + transfer rows
    final = run["stages"]["pred"]["final"]
    assert final["loss/pred"] >= 0 and math.isfinite(final["loss/hard"])
    assert "GLUE score" in capsys.readouterr().out


def test_hard_loss_counts_labelled_rows_only(setup, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    root, _, teacher_dir, _ = setup
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    student = AutoModelForSequenceClassification.from_pretrained(root / "student", num_labels=2)
    objective = TaskDistillObjective(student, teacher, get_task("rte"), {"pred": 1.0, "hard": 1.0},
                                     TaskDistillConfig(temperature=2.0))
    objective.eval()
    collate = make_collate(tiny_tokenizer.pad_token_id, regression=False)
    rows = [{"input_ids": torch.tensor(tiny_tokenizer("the king saw the whale", "a bad film")["input_ids"]),
             "label": label} for label in (1.0, math.nan, 0.0)]
    batch = collate(rows)
    assert batch["labelled"].tolist() == [True, False, True]
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([1, 0]))
    assert objective(batch)["hard"].item() == pytest.approx(expected.item(), rel=1e-5)
    unlabelled = collate([rows[1], rows[1]])
    terms = objective(unlabelled)
    assert terms["hard"].item() == 0.0 and terms["pred"].item() > 0  # only the teacher teaches a transfer row
    # the teacher's logits computed once (with_teacher_logits) give the term the teacher's forward gives
    from kd_core.glue.distill import with_teacher_logits
    from kd_core.glue.finetune import EncodedRows

    cache = {}
    cached = with_teacher_logits(teacher, EncodedRows(rows), collate, 2, cache)
    again = with_teacher_logits(teacher, EncodedRows(rows), collate, 2, cache)
    assert len(cache) == 1 and torch.equal(again[0]["teacher_logits"], cached[0]["teacher_logits"])  # reused
    assert objective(collate(cached))["pred"].item() == pytest.approx(objective(batch)["pred"].item(), rel=1e-5)
    teacher.classifier.bias.data += 1.0  # another teacher (or other inputs) never gets the cached logits
    with_teacher_logits(teacher, EncodedRows(rows), collate, 2, cache)
    assert len(cache) == 2


def test_transfer_set_sources_and_their_errors(tmp_path):
    rte, sst2 = get_task("rte"), get_task("sst2")
    rows = [Example(f"s{i}", f"t{i}", float(i % 2)) for i in range(10)]
    subset, left_out = labelled_subset(rows, 4)
    assert len(subset) == 4 and len(left_out) == 6 and not set(subset) & set(left_out)
    assert labelled_subset(rows, 0) == (rows, [])
    single = tmp_path / "single.txt"
    single.write_text("a fine film\tstill one sentence\n\nbad\n")
    assert [e.text_a for e in read_transfer_file(single, sst2)] == ["a fine film\tstill one sentence", "bad"]
    both = transfer_examples(rte, [], left_out, use_left_out=True, limit=5)
    assert len(both) == 5 and all(math.isnan(e.label) for e in both)
    with pytest.raises(UserError, match=r"single.txt:3: rte is a sentence-pair task"):
        read_transfer_file(single, rte)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="no examples"):
        read_transfer_file(tmp_path / "empty.txt", sst2)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not UTF-8"):
        read_transfer_file(tmp_path / "binary.txt", sst2)
    with pytest.raises(UserError, match="no such file"):
        read_transfer_file(tmp_path / "missing.txt", sst2)


@pytest.mark.parametrize("extra, expected", [
    (["--teacher", "{base}"], "is not fine-tuned on a task"),  # an MLM checkpoint would teach a random head's noise
    (["--teacher", "{teacher}", "--temperature", "-1"], "temperature is -1.0: give a positive number"),
    (["--distill", "pred"], "--distill need(s) --teacher"),  # would quietly fine-tune on labels only
    (["--transfer", "x.txt"], "--transfer need(s) --teacher"),
])
def test_task_distillation_nonsense_is_one_error_line(setup, tmp_path, capsys, extra, expected):
    root, _, teacher, common = setup
    extra = [x.format(base=root / "teacher_base", teacher=teacher) for x in extra]
    out = tmp_path / "out"
    assert glue_main(["--model", str(root / "student"), "--output-dir", str(out), "--seeds", "1", *extra, *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1 and expected in err[-1]
    assert not (out / "rte").exists()  # refused before any run
