"""RoBERTa as a first-class family, end to end with tiny random models: a byte-level BPE corpus, a
RoBERTa teacher, a same-family student initialised from its layers, every bert_kd loss term, the
run CLI's resume, and GLUE fine-tuning (the Korean slides distil RoBERTa into DistilRoBERTa)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, RobertaConfig

from bert_kd.distill import DistilConfig, run
from bert_kd.objective import DistillationObjective, DistilLossConfig
from kd_core.config import load_config
from kd_core.data import MaskingCollator, MaskingConfig, PrepareConfig, prepare
from kd_core.families import family_of
from kd_core.glue.grid import GridConfig, run_grid
from kd_core.glue.tasks import get_task
from kd_core.metrics_log import read_metrics
from kd_core.student import StudentConfig, build_student
from kd_core.toy import make_roberta_tokenizer, tiny_roberta_teacher, write_text_corpus, write_tiny_glue

ALL_TERMS = {"ce": 5.0, "mlm": 2.0, "cos": 1.0, "hid": 1.0, "att": 1.0, "emb": 1.0, "mse_logits": 1.0}


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    root = tmp_path_factory.mktemp("roberta")
    tokenizer = make_roberta_tokenizer(root / "tokenizer")
    teacher = tiny_roberta_teacher(root / "teacher", tokenizer, layers=4)
    prepare(PrepareConfig(tokenizer=str(root / "tokenizer"), inputs=[str(write_text_corpus(root / "docs.txt"))],
                          output=str(root / "corpus"), max_len=32, valid_fraction=0.1, min_piece=8))
    return {"root": root, "tokenizer": tokenizer, "teacher": teacher}


def _batch(tokenizer, seed=0):
    collate = MaskingCollator.from_tokenizer(MaskingConfig(mask_prob=0.3), tokenizer)
    rows = [torch.tensor(tokenizer(s)["input_ids"]) for s in ("the king saw the whale in the sea",
                                                              "a good movie is a great story with music")]
    return collate(rows, torch.Generator().manual_seed(seed))


def test_family_limits_follow_roberta_positions():
    config = RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    assert family_of(config).max_length(config) == 512  # positions start after the padding index


def test_student_copies_teacher_layers_and_identical_student_gives_zero_loss(roberta):
    teacher, tokenizer = roberta["teacher"], roberta["tokenizer"]
    student, layer_map, report = build_student(teacher, StudentConfig(num_layers=2, layers=[1, 3]))
    assert type(student).__name__ == "RobertaForMaskedLM" and not report["not_copied"]
    assert torch.equal(student.roberta.encoder.layer[1].output.dense.weight, teacher.roberta.encoder.layer[3].output.dense.weight)
    twin, twin_map, _ = build_student(teacher, StudentConfig(num_layers=4, layers="first_k"))
    objective = DistillationObjective(twin, teacher, twin_map, ALL_TERMS, DistilLossConfig(temperature=2.0)).eval()
    terms = objective(_batch(tokenizer))
    assert set(terms) == set(ALL_TERMS)
    for name in ("ce", "cos", "hid", "att", "emb", "mse_logits"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-5), name
    assert terms["mlm"].item() > 0


def test_distillation_run_resume_and_glue_fine_tuning(roberta, tmp_path):
    root = roberta["root"]
    cfg = load_config(DistilConfig, overrides=[
        f"teacher={root / 'teacher'}", f"data.corpus={root / 'corpus'}", "student.num_layers=2",
        "loss_weights={ce: 5, mlm: 2, cos: 1, hid: 1, att: 100, emb: 1}", "train.max_steps=40", "train.batch_size=8",
        "train.micro_batch_size=8", "train.lr=3e-3", "train.log_every=5", "train.save_every=20"])
    out = tmp_path / "run"
    run(cfg, str(out))
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r]
    for term in ("ce", "mlm", "cos", "hid", "att"):
        assert records[-1][f"loss/{term}"] < records[0][f"loss/{term}"], term
    assert records[-1]["loss/emb"] < 0.05  # embeddings start as the teacher's (emb ~ 0) and stay close
    assert json.loads((out / "student_init.json").read_text())["layer_map"] == [0, 2]
    student = AutoModelForMaskedLM.from_pretrained(out / "final")
    assert type(student).__name__ == "RobertaForMaskedLM" and student.config.num_hidden_layers == 2
    AutoModelForSequenceClassification.from_pretrained(out / "final", num_labels=2)
    before = load_file(out / "final" / "model.safetensors")
    for later in ("checkpoint-40", "final"):
        shutil.rmtree(out / later)
    run(cfg, str(out), resume=True)  # from checkpoint-20, dropout on (RoBERTa's default 0.1 is off here)
    after = load_file(out / "final" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)

    glue = write_tiny_glue(tmp_path / "glue", n_rte=64, n_stsb=48, n_dev=16)
    grid = GridConfig(lrs=[1e-3], batch_sizes=[16], seeds=1)
    grid.finetune.epochs, grid.finetune.max_len = 2.0, 32
    results = run_grid(str(out / "final"), [get_task("rte"), get_task("stsb")], str(glue), grid, tmp_path / "glue_run")
    assert results.score is not None and 0 <= results.tasks["rte"].metrics["accuracy"]["mean"] <= 100
