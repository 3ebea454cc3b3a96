"""Teachers: the recipe composes one typed config, the held-out measures match hand computations, the gate decides,
and a teacher below its gate stops the recipe with one `error:` line (exit 2), built now or cached."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_core import teacher_gate
from kd_core.config import ConfigError
from kd_core.errors import UserError
from kd_core.mlm_eval import constant_rtd_loss, masked_lm_scores, roc_auc, unigram_log_probs

ROOT = Path(__file__).resolve().parents[1]
FAST = ["train.batch_size=8", "train.micro_batch_size=8", "train.eval_batches=1", "train.eval_every=0",
        "train.mixed_precision=no", "train.log_every=1"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ELECTRA_KD_CACHE", str(tmp_path / "cache"))


def encoder_only(tmp_path, tokenizer, name="encoder") -> Path:
    """A tiny BERT saved WITHOUT an MLM head, as all-MiniLM-L6-v2 is."""
    from transformers import BertForMaskedLM

    from kd_core.toy import tiny_bert_teacher

    tiny_bert_teacher(tmp_path / "with_head", tokenizer, layers=2)
    out = tmp_path / name
    BertForMaskedLM.from_pretrained(tmp_path / "with_head").bert.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---- measures -----------------------------------------------------------------------------------------------------
def test_unigram_log_probs_by_hand():
    counts = np.array([5, 0, 3, 1, 0])  # id 0 and 4 are special
    got = unigram_log_probs(counts, special_ids=[0, 4], alpha=0.5)
    total = (0 + 0.5) + (3 + 0.5) + (1 + 0.5)
    assert got[1].item() == pytest.approx(math.log(0.5 / total), rel=1e-6)
    assert got[2].item() == pytest.approx(math.log(3.5 / total), rel=1e-6)
    assert got[0] == -math.inf and got[4] == -math.inf
    assert torch.exp(got).sum().item() == pytest.approx(1.0, rel=1e-6)


def test_unigram_baseline_at_the_same_masked_positions(tiny_tokenizer, tiny_corpus, tmp_path):
    """The baseline scores exactly the positions the model is scored at: mean -log p(label), top-1 = the argmax."""
    from kd_core.data import MaskingCollator, MaskingConfig, open_corpus
    from kd_core.heads import IGNORE_INDEX
    from kd_core.mlm_eval import corpus_unigram
    from kd_core.toy import tiny_bert_teacher

    model = tiny_bert_teacher(tmp_path / "m", tiny_tokenizer, layers=1)
    rows = open_corpus(tiny_corpus, tiny_tokenizer, "train")
    collate = MaskingCollator.from_tokenizer(MaskingConfig(whole_word=False), tiny_tokenizer)
    uni = corpus_unigram(tiny_corpus, tiny_tokenizer)
    got = masked_lm_scores(model, rows, collate, batches=3, batch_size=4, unigram=uni)
    labels = torch.cat([l[l != IGNORE_INDEX] for l in
                        (collate([rows[i] for i in range(b * 4, b * 4 + 4)], torch.Generator().manual_seed(b))["labels"]
                         for b in range(3))])
    counts = np.load(tiny_corpus / "token_counts.npy")[:len(tiny_tokenizer)].astype(float) + 0.5
    counts[tiny_tokenizer.all_special_ids] = 0
    p = counts / counts.sum()
    assert got["masked_tokens"] == len(labels) > 0
    assert got["unigram_loss"] == pytest.approx(float(np.mean(-np.log(p[labels.numpy()]))), rel=1e-5)
    assert got["unigram_accuracy"] == pytest.approx(float(np.mean(labels.numpy() == p.argmax())))


def test_constant_predictor_rtd_loss_is_the_label_entropy():
    y = torch.tensor([1.0] * 13 + [0.0] * 87)
    r = 0.13
    bce = torch.nn.functional.binary_cross_entropy(torch.full_like(y, r), y).item()
    assert constant_rtd_loss(r) == pytest.approx(bce, rel=1e-6)
    assert constant_rtd_loss(r) == pytest.approx(-(0.13 * math.log(0.13) + 0.87 * math.log(0.87)))
    for other in (0.05, 0.2, 0.5):  # no other constant does better
        assert torch.nn.functional.binary_cross_entropy(torch.full_like(y, other), y).item() > constant_rtd_loss(r)
    assert constant_rtd_loss(0.0) == 0.0 and constant_rtd_loss(1.0) == 0.0


def test_roc_auc():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.2, 0.8, 0.1]), np.array([0, 0, 1, 1])) == pytest.approx(0.25)  # 1 of 4 pairs
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)  # ties count half


# ---- the gate -----------------------------------------------------------------------------------------------------
def test_mlm_gate_on_constructed_numbers():
    ok = {"mlm_loss": 4.49, "masked_accuracy": 0.251}
    assert teacher_gate.mlm_failures(ok) == []
    assert teacher_gate.mlm_failures({**ok, "mlm_loss": 4.51}) == ["held-out MLM loss 4.51 nats > 4.5"]
    assert teacher_gate.mlm_failures({**ok, "masked_accuracy": 0.24}) == ["top-1 24.0% < 25%"]
    assert len(teacher_gate.mlm_failures({"mlm_loss": 6.70, "masked_accuracy": 0.076})) == 2  # the 120-step teacher
    assert len(teacher_gate.mlm_failures({"mlm_loss": float("nan"), "masked_accuracy": 0.3})) == 1  # NaN fails


def test_electra_gate_on_constructed_numbers():
    ok = {"rtd_loss": 0.20, "constant_rtd_loss": 0.40, "rtd_auc": 0.90}
    assert teacher_gate.electra_failures(ok) == []
    failed = teacher_gate.electra_failures({**ok, "rtd_loss": 0.27})  # the old teacher: 0.27 vs 0.40
    assert failed and "0.6 x the constant predictor's 0.400 = 0.240" in failed[0]
    assert teacher_gate.electra_failures({**ok, "rtd_auc": 0.7}) == ["RTD AUC 0.700 < 0.8"]


def test_enforce_is_one_line_naming_numbers_and_fix():
    card = {"kind": "mlm", "held_out": {"valid": {"mlm_loss": 6.7, "masked_accuracy": 0.076, "unigram_loss": 6.84,
                                                  "unigram_accuracy": 0.058}}}
    with pytest.raises(teacher_gate.TeacherGateError) as e:
        teacher_gate.enforce(card, "/x", "train it longer")
    text = str(e.value)
    assert "\n" not in text and "6.70 nats > 4.5" in text and "unigram 6.84" in text and "Fix: train it longer" in text


# ---- the recipe ---------------------------------------------------------------------------------------------------
def test_recipe_is_the_calibrated_one_and_composes_once():
    import teachers

    r = teachers.compose("mlm")
    assert (r.train.max_steps, r.head_steps, r.head_lr, r.train.lr, r.train.warmup_ratio, r.train.schedule) == \
        (1300, 200, 1e-3, 3e-4, 0.06, "linear")
    assert (r.train.batch_size, r.train.micro_batch_size, r.train.mixed_precision) == (32, 32, "bf16")
    assert teachers.compose("mlm", 500, ["train.batch_size=16", "train.micro_batch_size=16"]).train.batch_size == 16
    with pytest.raises(ConfigError, match="train.batch_size twice"):
        teachers.compose("mlm", None, ["train.batch_size=32", "train.batch_size=16"])
    with pytest.raises(ConfigError, match="--steps sets train.max_steps"):
        teachers.compose("mlm", 100, ["train.max_steps=200"])
    with pytest.raises(ConfigError, match="unknown config key"):
        teachers.compose("mlm", None, ["train.batchsize=16"])
    assert teachers.compose("mlm", 100, ["train.max_steps=100"]).train.max_steps == 100  # one value, said twice
    e = teachers.compose("electra", None, ["generator_mlm.train.max_steps=7", "generator_mlm.head_steps=3"])
    assert e.generator_mlm.train.max_steps == 7 and e.masking.replace == (0.85, 0.0, 0.15)


def test_mlm_init_ties_the_decoder_and_starts_its_bias_at_log_unigram(tmp_path, tiny_tokenizer, tiny_corpus):
    from transformers import AutoModelForMaskedLM

    import teachers
    from kd_core.mlm_eval import UNIGRAM_ALPHA

    init, new_head = teachers.mlm_init(encoder_only(tmp_path, tiny_tokenizer), tmp_path / "t", str(tiny_corpus),
                                       teachers.compose("mlm"))
    assert new_head
    model = AutoModelForMaskedLM.from_pretrained(init)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    counts = np.load(tiny_corpus / "token_counts.npy")[:len(tiny_tokenizer)] + UNIGRAM_ALPHA
    np.testing.assert_allclose(model.get_output_embeddings().bias.detach().numpy(), np.log(counts / counts.sum()),
                               rtol=1e-5)


def test_head_phase_trains_the_head_alone(tmp_path, tiny_tokenizer, tiny_corpus):
    from transformers import AutoModelForMaskedLM

    import teachers

    out = teachers.build_teacher("mlm", str(tiny_corpus), 4, [*FAST, "head_steps=2"], output=tmp_path / "t",
                                 encoder=encoder_only(tmp_path, tiny_tokenizer), gate="report")
    init = AutoModelForMaskedLM.from_pretrained(out / "init").state_dict()
    head = AutoModelForMaskedLM.from_pretrained(out / "head" / "final").state_dict()
    assert torch.equal(init["bert.encoder.layer.0.attention.self.query.weight"],
                       head["bert.encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(init["bert.embeddings.word_embeddings.weight"], head["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(init["cls.predictions.transform.dense.weight"], head["cls.predictions.transform.dense.weight"])
    final = AutoModelForMaskedLM.from_pretrained(out / "final").state_dict()
    assert not torch.equal(head["bert.encoder.layer.0.attention.self.query.weight"],
                           final["bert.encoder.layer.0.attention.self.query.weight"])
    with pytest.raises(UserError, match="leaves no whole-model step"):
        teachers.build_teacher("mlm", str(tiny_corpus), 4, [*FAST, "head_steps=4"], output=tmp_path / "t2",
                               encoder=tmp_path / "encoder", gate="report")
    card = json.loads((out / "card.json").read_text())
    assert card["steps"] == 4 and card["head_steps"] == 2 and card["passed"] is False
    assert card["recipe"]["train"]["batch_size"] == 8  # the batch the recipe says is the batch it ran
    m = card["held_out"]["valid"]
    assert {"mlm_loss", "masked_accuracy", "unigram_loss", "unigram_accuracy"} <= set(m)
    cfg = (out / "config.yaml").read_text()
    assert "batch_size: 8" in cfg and "lr: 0.0003" in cfg


def test_bert_mlm_converts_to_an_electra_generator_with_the_same_logits(tmp_path, tiny_tokenizer):
    from transformers import BertForMaskedLM, ElectraForMaskedLM

    import teachers
    from kd_core.toy import tiny_bert_teacher

    tiny_bert_teacher(tmp_path / "bert", tiny_tokenizer, layers=2)
    gen_dir = teachers.bert_mlm_to_electra_generator(tmp_path / "bert", tmp_path / "gen")
    bert, gen = BertForMaskedLM.from_pretrained(tmp_path / "bert").eval(), ElectraForMaskedLM.from_pretrained(gen_dir).eval()
    ids = torch.randint(5, len(tiny_tokenizer), (2, 9))
    torch.testing.assert_close(gen(input_ids=ids).logits, bert(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert gen.generator_lm_head.weight.data_ptr() == gen.electra.embeddings.word_embeddings.weight.data_ptr()


def test_electra_teacher_on_the_frozen_mlm_teacher(tmp_path, tiny_tokenizer, tiny_corpus, monkeypatch):
    from transformers import BertForMaskedLM, ElectraForMaskedLM, ElectraForPreTraining

    import teachers

    monkeypatch.setenv("ELECTRA_KD_CACHE", str(tmp_path / "cache"))
    small = [*FAST, "generator_mlm.train.max_steps=2", "generator_mlm.head_steps=1",
             *[f"generator_mlm.{o}" for o in FAST]]
    out = teachers.build_teacher("electra", str(tiny_corpus), 2, small, encoder=encoder_only(tmp_path, tiny_tokenizer),
                                 gate="report")
    card = json.loads((out / "card.json").read_text())
    m = card["held_out"]["valid"]
    assert m["constant_rtd_loss"] == pytest.approx(constant_rtd_loss(m["replaced_rate"]))
    assert 0 < m["replaced_rate"] < 0.3 and {"rtd_auc", "generator_mlm_loss", "generator_unigram_loss"} <= set(m)
    generator = Path(card["generator_from"])  # the cached MLM teacher, its weights unchanged in generator/
    assert generator.parent.name.startswith("mlm-") and card["generator_card"]["teacher"] == str(generator)
    disc0 = ElectraForPreTraining.from_pretrained(out / "init").state_dict()  # the RTD run's starting point
    mlm = BertForMaskedLM.from_pretrained(generator).state_dict()  # = the gated MLM teacher's encoder, not raw MiniLM
    assert all(torch.equal(disc0["electra." + k[len("bert."):]], v) for k, v in mlm.items()
               if k.startswith("bert.") and "pooler" not in k)
    g = ElectraForMaskedLM.from_pretrained(out / "generator").state_dict()
    g0 = ElectraForMaskedLM.from_pretrained(out / "generator_init").state_dict()
    assert all(torch.equal(g[k], g0[k]) for k in g0)
    cards = {"mlm": json.loads((generator.parent / "card.json").read_text()), "electra": card}
    text = teachers.card_markdown({k: teachers.portable_card(c) for k, c in cards.items()})
    assert f"| corpus valid split | {m['tokens']:,} | {m['rtd_loss']:.3f} | {m['constant_rtd_loss']:.3f} |" in text
    assert "FAILS" in text and str(tmp_path / "cache") not in text and "<cache>/teachers/electra-" in text


# ---- failing the gate stops the recipe ----------------------------------------------------------------------------
def run_cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'recipes'}", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "teachers.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def test_a_teacher_below_its_gate_stops_the_cli_with_one_error_line(tmp_path, tiny_tokenizer, tiny_corpus):
    encoder = encoder_only(tmp_path, tiny_tokenizer)
    args = ["mlm", "--corpus", str(tiny_corpus), "--encoder", str(encoder), "--steps", "2",
            *[x for o in [*FAST, "head_steps=1"] for x in ("--set", o)]]
    env = {"ELECTRA_KD_CACHE": str(tmp_path / "cache")}
    done = run_cli(*args, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "fails its quality gate" in errors[0] and "% < 25%" in errors[0]  # the numbers
    assert "Fix: train it longer" in errors[0] and "Traceback" not in done.stderr
    cached = next((tmp_path / "cache" / "teachers").glob("mlm-*"))
    assert json.loads((cached / "card.json").read_text())["passed"] is False
    again = run_cli(*args, env=env)  # the cached teacher: its card is read, it still fails, nothing is retrained
    assert again.returncode == 2 and "built before" in again.stdout
    assert sum(line.startswith("error:") for line in again.stderr.splitlines()) == 1
    report = run_cli(*args, "--gate", "report", env=env)  # a smoke build may be used, with a warning
    assert report.returncode == 0 and "warning: the mlm teacher" in report.stdout


def test_build_teacher_enforces_the_gate_of_a_cached_teacher(tmp_path, tiny_tokenizer, tiny_corpus, monkeypatch):
    import teachers

    monkeypatch.setenv("ELECTRA_KD_CACHE", str(tmp_path / "cache"))
    encoder = encoder_only(tmp_path, tiny_tokenizer)
    out = teachers.build_teacher("mlm", str(tiny_corpus), 2, [*FAST, "head_steps=1"], encoder=encoder, gate="report")
    with pytest.raises(teacher_gate.TeacherGateError, match="fails its quality gate"):
        teachers.build_teacher("mlm", str(tiny_corpus), 2, [*FAST, "head_steps=1"], encoder=encoder)  # cache: enforce
    card = json.loads((out / "card.json").read_text())
    card["held_out"]["valid"].update(mlm_loss=4.0, masked_accuracy=0.3)  # a card that passes is used
    (out / "card.json").write_text(json.dumps(card))
    assert teachers.build_teacher("mlm", str(tiny_corpus), 2, [*FAST, "head_steps=1"], encoder=encoder) == out


def test_glue_next_to_the_teachers_truncation(tmp_path, tiny_tokenizer):
    import teachers
    from kd_core.toy import tiny_bert_teacher, write_tiny_glue

    tiny_bert_teacher(tmp_path / "run" / "final", tiny_tokenizer, layers=6)
    g = teachers.glue_next_to_truncation(tmp_path / "run", "mlm", str(write_tiny_glue(tmp_path / "glue")),
                                         tmp_path / "glue-out", task="rte")
    assert set(g["scores"]) == {"teacher", "layers 0,2,4"} and g["grid"]["seeds"] == 3
    assert all("mean" in v for scores in g["scores"].values() for v in scores.values())
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "glue-out" / "truncated" / "final").num_hidden_layers == 3
    card = {"kind": "mlm", "glue": g}
    assert "GLUE rte dev (mlm teacher next to its own layers 0,2,4" in "".join(
        line for line in teachers.card_markdown({"mlm": {**card, **fake_mlm_card()}}).splitlines())


def fake_mlm_card() -> dict:
    m = {"mlm_loss": 4.2, "masked_accuracy": 0.31, "masked_tokens": 100, "unigram_loss": 6.8, "unigram_accuracy": 0.06}
    return {"teacher": "<cache>/teachers/mlm-x/final", "held_out": {"valid": m}, "gate": {"max_loss": 4.5, "min_top1": 0.25},
            "passed": True, "failures": [], "steps": 1300, "tokens": 2_600_000, "train_wall_s": 840.0, "eval_wall_s": 10.0,
            "commit": "abc", "hardware": "cpu", "command": "python recipes/teachers.py mlm", "recipe": {},
            "held_out_text": {"valid": "the valid split"}}
