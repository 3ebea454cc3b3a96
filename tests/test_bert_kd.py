"""bert_kd: student construction, the distillation objective, and an end-to-end tiny run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from bert_kd.distill import DistilConfig, run
from bert_kd.objective import DistillationObjective, DistilLossConfig
from kd_core import losses
from kd_core.toy import tiny_bert_teacher
from kd_core.config import load_config
from kd_core.data import MaskingCollator, MaskingConfig
from kd_core.layer_map import resolve_layer_map
from kd_core.metrics_log import read_metrics, shares_text, term_shares
from kd_core.families.distilbert import bert_to_distilbert
from kd_core.student import StudentConfig, build_student
from kd_core.errors import UserError
from test_losses import ref_kd_kl


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("teacher")
    tiny_bert_teacher(d, tiny_tokenizer, layers=4)
    return d


@pytest.fixture
def teacher(teacher_dir):
    return AutoModelForMaskedLM.from_pretrained(teacher_dir)


def _layer(model, i):
    return model.base_model.encoder.layer[i] if hasattr(model.base_model, "encoder") else \
        model.base_model.transformer.layer[i]


# ---- layer maps ---------------------------------------------------------------------------------
def test_layer_map_presets():
    assert resolve_layer_map("distilbert", 12, 6).teacher_layers == (0, 2, 4, 7, 9, 11)
    assert resolve_layer_map("greek", 12, 4).teacher_layers == (0, 4, 7, 11)
    assert resolve_layer_map("every_other", 12, 6).teacher_layers == (0, 2, 4, 6, 8, 10)
    assert resolve_layer_map("first_k", 6, 3).teacher_layers == (0, 1, 2)
    assert resolve_layer_map("last_k", 6, 3).teacher_layers == (3, 4, 5)
    assert resolve_layer_map("uniform_last", 12, 4).teacher_layers == (2, 5, 8, 11)
    assert resolve_layer_map("0,3,5", 6, 3).teacher_layers == (0, 3, 5)
    assert resolve_layer_map("greek", 12, 4).hidden_pairs() == [(1, 1), (2, 5), (3, 8), (4, 12)]
    with pytest.raises(UserError, match="for a 12-layer teacher"):
        resolve_layer_map("distilbert", 6, 3)
    with pytest.raises(UserError, match="outside the teacher"):
        resolve_layer_map([0, 9], 6, 2)
    with pytest.raises(UserError, match="unknown layer preset"):
        resolve_layer_map("evry_other", 6, 3)


# ---- student construction -------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [[0, 3], [1, 2], "first_k", "last_k", "every_other"])
def test_teacher_init_copies_mapped_layers_exactly(teacher, layers):
    student, layer_map, report = build_student(teacher, StudentConfig(num_layers=2, layers=layers))
    assert report["not_copied"] == []
    for i, t in enumerate(layer_map.teacher_layers):
        for (name, p), (_, q) in zip(_layer(student, i).state_dict().items(), _layer(teacher, t).state_dict().items()):
            assert torch.equal(p, q), (i, t, name)
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert torch.equal(student.cls.predictions.transform.dense.weight, teacher.cls.predictions.transform.dense.weight)


def test_distilbert_student_from_bert_teacher(teacher, tiny_tokenizer):
    student, _, report = build_student(teacher, StudentConfig(arch="distilbert", num_layers=2, layers=[1, 3]))
    assert type(student).__name__ == "DistilBertForMaskedLM"
    assert report["not_copied"] == []
    assert not hasattr(student.distilbert.embeddings, "token_type_embeddings")
    t_layer, s_layer = teacher.bert.encoder.layer[3], student.distilbert.transformer.layer[1]
    assert torch.equal(s_layer.attention.q_lin.weight, t_layer.attention.self.query.weight)
    assert torch.equal(s_layer.ffn.lin2.bias, t_layer.output.dense.bias)
    assert torch.equal(student.vocab_projector.bias, teacher.cls.predictions.bias)
    # token type 0 is folded into the position embeddings: a DistilBERT copy of layers 0,1 computes
    # exactly what the BERT teacher computes for single-segment input
    same, _, _ = build_student(teacher, StudentConfig(arch="distilbert", num_layers=2, layers=[0, 1]))
    ids = torch.tensor([tiny_tokenizer("the king saw the whale")["input_ids"]])
    with torch.no_grad():
        t_hidden = teacher.bert(input_ids=ids, output_hidden_states=True).hidden_states
        s_hidden = same.distilbert(input_ids=ids, output_hidden_states=True).hidden_states
    for i in range(3):
        assert torch.allclose(s_hidden[i], t_hidden[i], atol=1e-5), i


def test_checkpoint_and_random_init(teacher, tmp_path):
    donor_dir = tmp_path / "donor"
    donor, _, _ = build_student(teacher, StudentConfig(num_layers=3, layers=[0, 1, 2]))
    donor.save_pretrained(donor_dir)
    student, _, report = build_student(teacher, StudentConfig(num_layers=2, init="checkpoint",
                                                              init_checkpoint=str(donor_dir), init_layers=[0, 2]))
    assert report["layers"] == [0, 2]
    assert torch.equal(_layer(student, 1).output.dense.weight, _layer(donor, 2).output.dense.weight)
    rand, _, report = build_student(teacher, StudentConfig(num_layers=2, init="random"))
    assert "copied" not in report
    assert not torch.equal(_layer(rand, 0).output.dense.weight, _layer(teacher, 0).output.dense.weight)
    with pytest.raises(UserError, match="init_layers"):
        build_student(teacher, StudentConfig(num_layers=2, init="checkpoint", init_checkpoint=str(donor_dir)))


def test_narrow_student_shape_and_init_guard(teacher, tmp_path):
    narrow = StudentConfig(num_layers=2, hidden_size=16, num_attention_heads=2, init="random")
    student, _, report = build_student(teacher, narrow)
    assert student.config.hidden_size == 16 and student.config.intermediate_size == 32
    for width in (16, 64):  # narrower or wider "initialised from the teacher" would keep random layers
        with pytest.raises(UserError, match=r"layer tensors do not fit.*student \(\d+, \d+\), source \(\d+, \d+\)"
                                            r".*use student.init=random"):
            build_student(teacher, StudentConfig(num_layers=2, hidden_size=width, num_attention_heads=2))
    with pytest.raises(UserError, match="6-layer student is deeper than its 4-layer teacher"):
        build_student(teacher, StudentConfig(num_layers=6))
    donor, _, _ = build_student(teacher, StudentConfig(arch="distilbert", num_layers=2, layers=[0, 1]))
    donor.save_pretrained(tmp_path / "distilbert")
    with pytest.raises(UserError, match="nothing could be copied"):  # DistilBERT names into a BERT student
        build_student(teacher, StudentConfig(num_layers=2, init="checkpoint", init_checkpoint=str(tmp_path / "distilbert"),
                                             init_layers=[0, 1]))


def test_bert_to_distilbert_names_cover_every_parameter(teacher):
    """Every tensor of a same-depth DistilBERT is produced by the renaming (nothing left random)."""
    converted = bert_to_distilbert(teacher.state_dict())
    student, _, _ = build_student(teacher, StudentConfig(arch="distilbert", num_layers=4, layers="first_k"))
    assert set(student.state_dict()) <= set(converted)


# ---- the objective --------------------------------------------------------------------------------
ALL_WEIGHTS = {"ce": 1.0, "mlm": 1.0, "cos": 1.0, "mse_logits": 1.0, "att": 1.0, "hid": 1.0, "emb": 1.0}


def _batch(tokenizer, seed=0):
    rows = [torch.tensor(tokenizer(t)["input_ids"]) for t in
            ["the king saw the whale in the sea", "a good movie", "the old man and the child made a small house"]]
    collate = MaskingCollator.from_tokenizer(MaskingConfig(mask_prob=0.3), tokenizer)
    return collate(rows, torch.Generator().manual_seed(seed))


def _objective(teacher, student_cfg, weights, **loss):
    student, layer_map, _ = build_student(teacher, student_cfg)
    return DistillationObjective(student, teacher, layer_map, weights, DistilLossConfig(**loss))


def test_identical_student_gives_zero_distillation_loss(teacher, tiny_tokenizer):
    obj = _objective(teacher, StudentConfig(num_layers=4, layers="first_k"), ALL_WEIGHTS)
    obj.eval()
    terms = obj(_batch(tiny_tokenizer))
    for name in ("ce", "cos", "mse_logits", "att", "hid", "emb"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-5), name
    assert terms["mlm"].item() > 0  # the student's own task loss is not a distillation term


def test_objective_terms_match_full_forward_references(teacher, tiny_tokenizer):
    """ce/mlm/cos/att/hid against HF's own full forward (all-vocabulary logits) + hand formulas."""
    obj = _objective(teacher, StudentConfig(num_layers=2, layers=[1, 3], init="random"), ALL_WEIGHTS, temperature=2.0)
    obj.eval()
    batch = _batch(tiny_tokenizer, seed=3)
    terms = obj(batch)
    am = batch["attention_mask"].bool()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    for model in (teacher, obj.student):  # the reference maps come from HF's eager attention
        model.set_attn_implementation("eager")
    with torch.no_grad():
        t = teacher(**inputs, output_hidden_states=True, output_attentions=True)
        s = obj.student(**inputs, output_hidden_states=True, output_attentions=True)
    assert terms["ce"].item() == pytest.approx(ref_kd_kl(s.logits, t.logits, am, 2.0), rel=1e-4)
    masked = batch["labels"] != -100
    mlm = torch.nn.functional.cross_entropy(s.logits[masked], batch["labels"][masked])
    assert terms["mlm"].item() == pytest.approx(mlm.item(), rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(s.hidden_states[-1][am], t.hidden_states[-1][am], dim=-1)
    assert terms["cos"].item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    hid = [((s.hidden_states[i + 1][am] - t.hidden_states[j + 1][am]) ** 2).mean() for i, j in enumerate([1, 3])]
    assert terms["hid"].item() == pytest.approx(torch.stack(hid).mean().item(), rel=1e-5)
    pair = (am[:, :, None] & am[:, None, :])[:, None]
    att = [((s.attentions[i] - t.attentions[j]) ** 2)[pair.expand_as(s.attentions[i])].mean() for i, j in enumerate([1, 3])]
    assert terms["att"].item() == pytest.approx(torch.stack(att).mean().item(), rel=1e-5)


def test_restrict_ce_to_mask_uses_masked_positions_only(teacher, tiny_tokenizer):
    obj = _objective(teacher, StudentConfig(num_layers=2, layers=[0, 2], init="random"), {"ce": 1.0},
                     restrict_ce_to_mask=True,
                     temperature=1.0)
    obj.eval()
    batch = _batch(tiny_tokenizer, seed=1)
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s = obj.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    masked = batch["labels"] != -100
    assert obj(batch)["ce"].item() == pytest.approx(ref_kd_kl(s, t, masked, 1.0), rel=1e-4)
    assert set(obj(batch)) == {"ce"}  # zero-weight terms are not computed at all


def test_fused_ce_matches_full_vocabulary_logits_in_value_and_gradient(teacher, tiny_tokenizer):
    """L_ce alone runs fused (never holding [tokens x vocab]); value and student gradients equal the plain path."""
    obj = _objective(teacher, StudentConfig(num_layers=2, layers=[1, 3]), {"ce": 1.0}, temperature=2.0)
    obj.eval()  # no dropout: both passes see the same network
    batch = _batch(tiny_tokenizer, seed=2)
    am = batch["attention_mask"].bool()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t = teacher(**inputs).logits
    ref = losses.kd_kl(obj.student(**inputs).logits[am], t[am], None, 2.0)
    params = [p for p in obj.student.parameters() if p.requires_grad]
    want = torch.autograd.grad(ref, params, allow_unused=True)
    got_loss = obj(batch)["ce"]
    got = torch.autograd.grad(got_loss, params, allow_unused=True)
    assert got_loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, w in zip(got, want):
        assert (g is None) == (w is None) and (g is None or torch.allclose(g, w, rtol=1e-4, atol=1e-7))


def test_teacher_not_run_when_no_active_term_reads_it(teacher, tiny_tokenizer):
    """The teacherless control (every teacher term weighted 0) must not pay for a teacher forward."""
    obj = _objective(teacher, StudentConfig(num_layers=2, layers=[0, 2]), {"mlm": 1.0, "ce": 0.0, "cos": 0.0})

    def refuse(*args, **kwargs):
        raise AssertionError("teacher forward called")
    obj.teacher.bert.forward = refuse
    assert not obj.uses_teacher
    assert set(obj(_batch(tiny_tokenizer))) == {"mlm"}
    with pytest.raises(AssertionError, match="teacher forward called"):  # the guard works when a term needs it
        _objective(obj.teacher, StudentConfig(num_layers=2, layers=[0, 2]), {"mlm": 1.0, "cos": 1.0})(
            _batch(tiny_tokenizer))


def test_projections_for_narrow_students_get_gradients(teacher, tiny_tokenizer):
    obj = _objective(teacher, StudentConfig(num_layers=2, hidden_size=16, num_attention_heads=2, layers=[1, 3],
                                            init="random"), {"hid": 1.0, "emb": 1.0, "att": 1.0, "mse_logits": 1.0})
    proj_hidden, proj_emb = obj.intermediate.proj_hidden, obj.intermediate.proj_emb
    assert proj_hidden.weight.shape == (32, 16) and proj_emb.weight.shape == (32, 16)
    terms = obj(_batch(tiny_tokenizer))
    sum(terms.values()).backward()
    assert proj_hidden.weight.grad.abs().sum() > 0 and proj_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in obj.teacher.parameters())
    assert "intermediate.proj_hidden.weight" in obj.extras_state_dict()
    # no vocabulary term: the head's own parameters are frozen (DDP needs every trainable one used),
    # the decoder weight tied to the word embeddings stays trainable with the embeddings
    tiny = _objective(teacher, StudentConfig(num_layers=2, hidden_size=16, num_attention_heads=2, layers=[1, 3],
                                             init="random"), {"hid": 1.0, "emb": 1.0, "att": 1.0})
    assert not tiny.student.cls.predictions.transform.dense.weight.requires_grad
    assert tiny.student.cls.predictions.decoder.weight.requires_grad
    assert all(p.requires_grad for p in tiny.student.base_model.parameters())
    with pytest.raises(UserError, match="L_cos compares last hidden states"):
        _objective(teacher, StudentConfig(num_layers=2, hidden_size=16, num_attention_heads=2, init="random"),
                   {"cos": 1.0})
    with pytest.raises(UserError, match="unknown loss term"):
        _objective(teacher, StudentConfig(num_layers=2), {"cosine": 1.0})


# ---- end to end -------------------------------------------------------------------------------------
def test_tiny_distillation_decreases_every_term_and_round_trips(teacher_dir, tiny_corpus, tmp_path):
    cfg = load_config(DistilConfig, overrides=[
        f"teacher={teacher_dir}", f"data.corpus={tiny_corpus}", "student.num_layers=2", "student.layers=0,3",
        "student.hidden_size=16", "student.num_attention_heads=2", "student.init=random",
        "loss_weights.ce=5", "loss_weights.mlm=2", "loss_weights.cos=0", "loss_weights.hid=1",
        "loss_weights.att=1", "loss_weights.emb=1", "train.max_steps=40", "train.batch_size=8",
        "train.micro_batch_size=8", "train.lr=3e-3", "train.log_every=5", "train.warmup_steps=0",
        "train.save_every=20"])
    out = tmp_path / "run"
    run(cfg, str(out))
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r]
    for term in ("ce", "mlm", "hid", "att", "emb"):
        first, last = records[0][f"loss/{term}"], records[-1][f"loss/{term}"]
        assert last < first, f"{term}: {first} -> {last}"
        assert records[0][f"weighted/{term}"] == pytest.approx(cfg.loss_weights[term] * first, rel=1e-5)
    assert "loss/cos" not in records[0]
    for record in (records[0], records[-1]):  # each weighted term's share of the total, logged with it
        shares = {t: record[f"share/{t}"] for t in ("ce", "mlm", "hid", "att", "emb")}
        assert sum(shares.values()) == pytest.approx(1.0, rel=1e-5)
        assert shares["ce"] == pytest.approx(record["weighted/ce"] / record["loss/total"], rel=1e-6)
    shares = term_shares(out)
    assert shares["start"]["mlm"] == pytest.approx(records[0]["share/mlm"]) and shares["end"]["att"] == records[-1]["share/att"]
    assert shares_text(shares).startswith(f"ce {100 * shares['start']['ce']:.0f}% -> {100 * shares['end']['ce']:.0f}%")
    assert json.loads((out / "student_init.json").read_text())["layer_map"] == [0, 3]
    mlm = AutoModelForMaskedLM.from_pretrained(out / "final")
    assert mlm.config.num_hidden_layers == 2 and mlm.config.hidden_size == 16
    AutoModelForSequenceClassification.from_pretrained(out / "final", num_labels=3)
    AutoTokenizer.from_pretrained(out / "final")
    extras = torch.load(out / "checkpoint-40" / "extras.pt")
    assert set(extras) == {f"intermediate.{p}.{w}" for p in ("proj_hidden", "proj_emb") for w in ("weight", "bias")}
    # resume from the step-20 checkpoint reproduces the projections exactly
    import shutil

    shutil.rmtree(out / "checkpoint-40")
    shutil.rmtree(out / "final")
    run(cfg, str(out), resume=True)
    again = torch.load(out / "checkpoint-40" / "extras.pt")
    assert all(torch.equal(extras[k], again[k]) for k in extras)


def test_extract_cli(teacher_dir, tmp_path):
    out = tmp_path / "student"
    done = subprocess.run([sys.executable, "-m", "bert_kd", "extract", "--teacher", str(teacher_dir), "--layers",
                           "0,3", "--output", str(out), "--arch", "distilbert"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.model_type == "distilbert" and model.config.n_layers == 2
    AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    bad = subprocess.run([sys.executable, "-m", "bert_kd", "extract", "--teacher", str(tmp_path / "nope"),
                          "--layers", "0,1", "--output", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot load the masked-LM model from" in bad.stderr


@pytest.mark.parametrize("arch", ["bert", "distilbert", "electra"])
def test_attention_probe_equals_eager_attention(arch, teacher, tiny_tokenizer, tmp_path):
    """Maps recomputed from the hooked query/key projections (model on SDPA) = HF eager maps, padding included."""
    from kd_core.intermediate import AttentionProbe
    from kd_core.toy import tiny_electra

    if arch == "electra":
        model = tiny_electra(tmp_path, tiny_tokenizer)[0]
    else:
        model = build_student(teacher, StudentConfig(arch="same" if arch == "bert" else "distilbert", num_layers=3,
                                                     layers=[0, 1, 2]))[0]
    model.eval()
    batch = _batch(tiny_tokenizer)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    probe = AttentionProbe(model, [0, 2])
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        model(**inputs)
        maps = {i: probe.probs(i, batch["attention_mask"]) for i in (0, 2)}
        model.set_attn_implementation("eager")
        eager = model(**inputs, output_attentions=True).attentions
    valid = batch["attention_mask"].bool()
    for i in (0, 2):
        rows = valid[:, None, :, None].expand_as(maps[i])  # padded query rows are arbitrary in both
        assert torch.allclose(maps[i][rows], eager[i][rows], atol=1e-6), i


def test_a_finished_run_is_reused_only_with_the_settings_it_was_made_with(teacher_dir, tiny_corpus, tmp_path):
    """What the ablation and every recipe row call before skipping a distillation: the run's own config.yaml against
    the one asked for now; another max_steps or temperature is an error naming both values, never a silent reuse."""
    from kd_core.config import finished_with

    overrides = [f"teacher={teacher_dir}", f"data.corpus={tiny_corpus}", "student.num_layers=2", "train.max_steps=2",
                 "train.batch_size=8", "train.micro_batch_size=8", "train.log_every=1"]
    cfg = load_config(DistilConfig, overrides=overrides)
    out = tmp_path / "run"
    assert not finished_with(out, cfg)  # nothing there yet: train it
    run(cfg, str(out))
    assert finished_with(out, cfg)
    other = load_config(DistilConfig, overrides=[*overrides, "train.max_steps=3", "loss.temperature=4"])
    with pytest.raises(UserError, match=r"train.max_steps: 2 then, 3 now.*|loss.temperature: 2.0 then, 4.0 now") as e:
        finished_with(out, other)
    assert "train.max_steps: 2 then, 3 now" in str(e.value) and "loss.temperature" in str(e.value)
    (out / "config.yaml").unlink()
    with pytest.raises(UserError, match="no config.yaml"):
        finished_with(out, cfg)
