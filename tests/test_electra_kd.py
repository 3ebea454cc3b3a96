"""electra_kd: RTD corruption, every loss term, the embedding-size projection, runs and the ablation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kd_core.toy import tiny_electra, write_tiny_glue
from kd_core.config import load_config
from kd_core.data import MaskingCollator, MaskingConfig
from kd_core.metrics_log import read_metrics
from kd_core.student import StudentConfig, build_student
from kd_core.errors import UserError
from electra_kd import ablate as ablate_module
from electra_kd.ablate import AblationConfig, ablate
from electra_kd.distill import ElectraRunConfig, run
from electra_kd.objective import ElectraLossConfig, ElectraObjective, head_activations, loss_weights
from electra_kd.rtd import corrupt, gumbel_sample, rtd_labels
from transformers import ElectraForPreTraining


@pytest.fixture(scope="module")
def electra_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("electra")
    tiny_electra(d, tiny_tokenizer)
    return d


@pytest.fixture
def teacher(electra_dir):
    return ElectraForPreTraining.from_pretrained(electra_dir / "discriminator")


@pytest.fixture
def generator(electra_dir):
    from transformers import ElectraForMaskedLM

    return ElectraForMaskedLM.from_pretrained(electra_dir / "generator")


def _batch(tokenizer, seed=0, mask_prob=0.3):
    rows = [torch.tensor(tokenizer(t)["input_ids"]) for t in
            ["the king saw the whale in the sea", "a good movie", "the old man and the child made a small house"]]
    collate = MaskingCollator.from_tokenizer(MaskingConfig(mask_prob=mask_prob, replace=(0.85, 0.0, 0.15),
                                                           whole_word=False), tokenizer)
    return collate(rows, torch.Generator().manual_seed(seed))


# ---- RTD -----------------------------------------------------------------------------------------
def test_rtd_labels_count_a_correct_guess_as_original():
    original = torch.tensor([[101, 5, 6, 7, 8, 102]])
    corrupted = torch.tensor([[101, 5, 6, 9, 8, 102]])  # position 2 sampled its own token back; 3 replaced
    assert rtd_labels(original, corrupted).tolist() == [[0, 0, 0, 1, 0, 0]]


def test_gumbel_sampling_follows_the_distribution():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[1.0, 3.0]])).repeat(20000, 1)
    share = gumbel_sample(logits).float().mean().item()
    assert share == pytest.approx(0.75, abs=0.01)
    hot = gumbel_sample(logits * 0 + torch.tensor([0.0, 1.0]), temperature=0.25).float().mean().item()
    assert hot == pytest.approx(1 / (1 + math.exp(-4)), abs=0.01)  # softmax([0, 1] / 0.25)
    assert gumbel_sample(torch.tensor([[0.0, 2.0, 1.0]]), 0).tolist() == [1]


def test_corrupt_replaces_only_masked_positions(generator, tiny_tokenizer):
    batch = _batch(tiny_tokenizer, mask_prob=0.5)
    out, loss = corrupt(generator, batch, temperature=0, with_loss=True)
    masked = batch["labels"] != -100
    original = torch.where(masked, batch["labels"], batch["input_ids"])
    assert torch.equal(out["input_ids"][~masked], original[~masked])
    with torch.no_grad():
        argmax = generator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
    assert torch.equal(out["input_ids"][masked], argmax[masked])
    assert torch.equal(out["rtd_labels"], (out["input_ids"] != original).float())
    assert "labels" not in out and loss is not None and loss.requires_grad


# ---- the objective --------------------------------------------------------------------------------------
ALL = ElectraLossConfig(b1=1.0, b2=1.0, b3=1.0, temperature=2.0)


def _objective(teacher, generator, student_cfg, cfg=ALL):
    student, layer_map, _ = build_student(teacher, student_cfg, model_class=ElectraForPreTraining)
    return ElectraObjective(student, generator, loss_weights(cfg, True), cfg, teacher, layer_map)


def test_identical_student_gives_zero_distillation_loss(teacher, generator, tiny_tokenizer):
    obj = _objective(teacher, generator, StudentConfig(num_layers=4, layers="first_k"))
    obj.eval()
    terms = obj(_batch(tiny_tokenizer))
    assert set(terms) == {"rtd", "emb", "out", "hid", "att", "cos", "kl"}
    for name in ("emb", "out", "hid", "att", "cos", "kl"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-6), name
    assert terms["rtd"].item() > 0


def test_teacher_not_run_when_every_teacher_term_is_zero(teacher, generator, tiny_tokenizer):
    cfg = ElectraLossConfig(b1=1.0, b2=0.0, b3=0.0, mse_parts={p: 0.0 for p in ("emb", "out", "hid", "att")})
    obj = _objective(teacher, generator, StudentConfig(num_layers=2, layers="first_k"), cfg)

    def refuse(*args, **kwargs):
        raise AssertionError("teacher forward called")
    obj.teacher.electra.forward = refuse
    assert set(obj(_batch(tiny_tokenizer))) == {"rtd"}


def test_terms_match_hand_written_references(teacher, generator, tiny_tokenizer):
    obj = _objective(teacher, generator, StudentConfig(num_layers=2, layers=[1, 3], init="random"))
    obj.eval()
    batch = _batch(tiny_tokenizer, seed=4)
    torch.manual_seed(7)
    terms = obj(batch)
    torch.manual_seed(7)  # the same generator sample
    with torch.no_grad():
        corrupted, _ = corrupt(generator, batch)
        inputs = {"input_ids": corrupted["input_ids"], "attention_mask": corrupted["attention_mask"]}
        for model in (teacher, obj.student):  # reference maps from HF's eager attention
            model.set_attn_implementation("eager")
        s = obj.student(**inputs, output_hidden_states=True, output_attentions=True)
        t = teacher(**inputs, output_hidden_states=True, output_attentions=True)
    am = corrupted["attention_mask"].bool()
    y = corrupted["rtd_labels"][am]
    p = torch.sigmoid(s.logits[am])
    ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert terms["rtd"].item() == pytest.approx(ce.item(), rel=1e-5)
    vals = []
    for zs, zt in zip(s.logits[am].tolist(), t.logits[am].tolist()):
        ps, pt = 1 / (1 + math.exp(-zs / 2)), 1 / (1 + math.exp(-zt / 2))
        vals.append(pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps)))
    assert terms["kl"].item() == pytest.approx(sum(vals) / len(vals) * 4, rel=1e-4)
    cos = torch.nn.functional.cosine_similarity(s.hidden_states[-1][am], t.hidden_states[-1][am], dim=-1)
    assert terms["cos"].item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    with torch.no_grad():
        s_act = head_activations(obj.student, s.hidden_states[-1])
        t_act = head_activations(teacher, t.hidden_states[-1])
    assert terms["out"].item() == pytest.approx(((s_act[am] - t_act[am]) ** 2).mean().item(), rel=1e-5)
    assert terms["emb"].item() == pytest.approx(((s.hidden_states[0][am] - t.hidden_states[0][am]) ** 2).mean().item(),
                                                rel=1e-5)
    hid = [((s.hidden_states[i + 1][am] - t.hidden_states[j + 1][am]) ** 2).mean() for i, j in enumerate([1, 3])]
    assert terms["hid"].item() == pytest.approx(torch.stack(hid).mean().item(), rel=1e-5)


def test_embedding_size_and_width_projections(teacher, generator, tiny_tokenizer):
    """Teacher: embedding_size 16 != hidden 32. A 16-wide student keeps the 16-dim embeddings (copied)
    and compares its projected embedding outputs, states and head activations through learned maps."""
    cfg = ElectraLossConfig(b1=1.0, b2=0.0, b3=1.0)
    student_cfg = StudentConfig(num_layers=2, layers=[0, 2], hidden_size=16, num_attention_heads=2)
    student, _, report = build_student(teacher, student_cfg, model_class=ElectraForPreTraining)
    assert student.config.embedding_size == 16 and student.config.hidden_size == 16
    assert torch.equal(student.electra.embeddings.word_embeddings.weight, teacher.electra.embeddings.word_embeddings.weight)
    assert not hasattr(student.electra, "embeddings_project")  # embedding size = hidden size: no projection
    obj = _objective(teacher, generator, student_cfg, cfg)
    assert obj.intermediate.proj_emb.weight.shape == (32, 16) and obj.proj_out.weight.shape == (32, 16)
    terms = obj(_batch(tiny_tokenizer))
    sum(terms.values()).backward()
    for proj in (obj.intermediate.proj_emb, obj.intermediate.proj_hidden, obj.proj_out):
        assert proj.weight.grad.abs().sum() > 0
    with pytest.raises(UserError, match="L_cos needs equal widths"):
        _objective(teacher, generator, student_cfg, ElectraLossConfig(b2=1.0))


def test_loss_weights_expand_b1_over_the_mse_parts():
    cfg = ElectraLossConfig(b1=2.0, b2=0.5, b3=0.0, mse_parts={"emb": 1.0, "out": 0.0, "hid": 3.0, "att": 1.0})
    assert loss_weights(cfg, True) == {"rtd": 1.0, "emb": 2.0, "out": 0.0, "hid": 6.0, "att": 2.0, "cos": 0.5, "kl": 0.0}
    assert loss_weights(ElectraLossConfig(b1=0, b2=0, b3=0, train_generator=True, disc_weight=50), False) == \
        {"rtd": 50, "gen_mlm": 1.0}
    with pytest.raises(UserError, match="need a teacher"):
        loss_weights(ElectraLossConfig(), False)
    with pytest.raises(UserError, match="unknown L_mse part"):
        loss_weights(ElectraLossConfig(mse_parts={"embed": 1.0}), True)


# ---- runs --------------------------------------------------------------------------------------------
def _run_cfg(electra_dir, corpus, *extra):
    return load_config(ElectraRunConfig, overrides=[
        f"teacher={electra_dir / 'discriminator'}", f"generator.path={electra_dir / 'generator'}",
        f"data.corpus={corpus}", "student.num_layers=2", "student.layers=0,3", "train.max_steps=30",
        "train.batch_size=8", "train.micro_batch_size=8", "train.lr=2e-3", "train.log_every=5",
        "train.warmup_steps=0", *extra])


def test_distillation_decreases_terms_and_baseline_runs(electra_dir, tiny_corpus, tmp_path):
    out = tmp_path / "kd"
    # attention-probability MSEs are ~1e-3 in size: weight that part up so it is not drowned out
    run(_run_cfg(electra_dir, tiny_corpus, "loss.b1=1", "loss.b2=1", "loss.b3=1", "loss.mse_parts.att=100"), str(out))
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r]
    for term in ("emb", "hid", "att", "out", "cos", "kl"):
        assert records[-1][f"loss/{term}"] < records[0][f"loss/{term}"], term
    assert ElectraForPreTraining.from_pretrained(out / "final").config.num_hidden_layers == 2
    assert (out / "generator" / "config.json").is_file()
    # the derived weights (b1 x each L_mse part) are what the config file says the engine applied
    assert (out / "config.yaml").read_text().endswith(
        "# resolved loss weights: {rtd: 1, emb: 1, out: 1, hid: 1, att: 100, cos: 1, kl: 1}\n")
    base = tmp_path / "baseline"
    run(_run_cfg(electra_dir, tiny_corpus, "loss.b1=0", "loss.b2=0", "loss.b3=0"), str(base))
    first = read_metrics(base / "metrics.jsonl")[0]
    assert set(k for k in first if k.startswith("loss/")) == {"loss/rtd", "loss/total"}


def test_joint_generator_training_with_tied_embeddings(electra_dir, tiny_corpus, tmp_path):
    out = tmp_path / "joint"
    run(_run_cfg(electra_dir, tiny_corpus, "generator.path=null", "loss.train_generator=true", "loss.b1=0",
                 "loss.b2=0", "loss.b3=0", "loss.disc_weight=50", "train.max_steps=10"), str(out))
    first = [r for r in read_metrics(out / "metrics.jsonl") if "loss/gen_mlm" in r][0]
    assert first["weighted/rtd"] == pytest.approx(50 * first["loss/rtd"], rel=1e-5)
    from transformers import ElectraForMaskedLM

    gen = ElectraForMaskedLM.from_pretrained(out / "generator")
    disc = ElectraForPreTraining.from_pretrained(out / "final")
    assert torch.equal(gen.electra.embeddings.word_embeddings.weight, disc.electra.embeddings.word_embeddings.weight)
    assert gen.config.hidden_size == 8  # a quarter of the 32-wide student


class Killed(Exception):
    """Stands for a kill: KeyboardInterrupt would stop pytest itself."""


def _tiny_glue(root):
    return write_tiny_glue(root, n_rte=64, n_stsb=0, n_dev=20)


def test_ablation_grid_resumes_after_a_kill(electra_dir, tiny_corpus, tmp_path, monkeypatch):
    glue = _tiny_glue(tmp_path / "glue")
    base = _run_cfg(electra_dir, tiny_corpus, "train.max_steps=6")
    cfg = AblationConfig(base=base, b1=[0.0, 1.0], b2=[0.0, 1.0], b3=[1.0])
    cfg.glue.glue_dir, cfg.glue.finetune.epochs, cfg.glue.lrs, cfg.glue.batch_sizes = str(glue), 1.0, [1e-3], [16]
    trained = []
    real_run = ablate_module.run
    kill = {"at": 2}

    def counting_run(run_cfg, out_dir, resume=False):
        trained.append((run_cfg.loss.b1, run_cfg.loss.b2, run_cfg.loss.b3))
        if len(trained) == kill["at"]:
            raise Killed("killed during the second point")
        return real_run(run_cfg, out_dir, resume)

    monkeypatch.setattr(ablate_module, "run", counting_run)
    out = tmp_path / "ablation"
    with pytest.raises(Killed):
        ablate(cfg, out)
    kill["at"] = None
    assert trained == [(0.0, 0.0, 1.0), (0.0, 1.0, 1.0)]
    trained.clear()
    points = ablate(cfg, out)
    # point 1 was not trained again; the teacherless control (0, 0, 0) comes after the grid
    assert trained == [(0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)]
    assert len(points) == 4 and all(0 <= p["score"] <= 100 for p in points)
    table = (out / "ablation.md").read_text()
    assert "| 1 | 1 | 1 |" in table and "rte accuracy" in table
    assert "| b1=1_b2=1_b3=1 - b1=0_b2=0_b3=0 | 1, 1 |" in table  # each point against the teacherless control
    assert "| b1=1_b2=1_b3=1 - truncated, not distilled | 1, 1 |" in table
    controls = json.loads((out / "ablation.json").read_text())["controls"]
    assert set(controls) == {"teacherless", "truncated"} and 0 <= controls["truncated"]["score"] <= 100
    assert (out / "truncated" / "final" / "model.safetensors").is_file()
    assert (out / "heatmap.png").read_bytes().startswith(b"\x89PNG")
    assert len(list((out / "tb").iterdir())) == 4


def test_ablation_pools_distillation_seeds_of_the_seeded_points(electra_dir, tiny_corpus, tmp_path, monkeypatch):
    glue = _tiny_glue(tmp_path / "glue")
    cfg = AblationConfig(base=_run_cfg(electra_dir, tiny_corpus, "train.max_steps=4", "train.seed=3"),
                         b1=[0.0, 1.0], b2=[1.0], b3=[1.0], distill_seeds=2, seeded_points=[[1.0, 1.0, 1.0]])
    cfg.glue.glue_dir, cfg.glue.finetune.epochs, cfg.glue.lrs, cfg.glue.batch_sizes = str(glue), 1.0, [1e-3], [16]
    cfg.glue.seeds = 2
    seeds = []
    real_run = ablate_module.run

    def recording_run(run_cfg, out_dir, resume=False):
        seeds.append(((run_cfg.loss.b1, run_cfg.loss.b2), run_cfg.train.seed))
        return real_run(run_cfg, out_dir, resume)

    monkeypatch.setattr(ablate_module, "run", recording_run)
    out = tmp_path / "ablation"
    points = ablate(cfg, out)
    # (1, 1, 1) distilled at seeds 3 and 4; (0, 1, 1) and the teacherless control once, at the base seed
    assert seeds == [((0.0, 1.0), 3), ((1.0, 1.0), 3), ((1.0, 1.0), 4), ((0.0, 0.0), 3)]
    full = points[1]
    assert full["distill_seeds"] == 2 and [Path(d).name for d in full["run_dirs"]] == ["b1=1_b2=1_b3=1", "b1=1_b2=1_b3=1_seed1"]
    per_seed = [json.loads((Path(d) / "glue" / "results.json").read_text())["tasks"]["rte"]["metrics"]["accuracy"]["mean"]
                for d in full["run_dirs"]]
    assert full["score"] == pytest.approx(sum(per_seed) / 2)  # 2 x 2 runs pooled, equal seeds per distillation run
    evals = [[r["eval/loss/rtd"] for r in read_metrics(Path(d) / "metrics.jsonl") if "eval/loss/rtd" in r][-1]
             for d in full["run_dirs"]]
    assert full["final_eval_rtd"] == pytest.approx(sum(evals) / 2)
    table = (out / "ablation.md").read_text()
    assert "| 1 | 1 | 1 | 2 x 2 |" in table and "| 0 | 1 | 1 | 1 x 2 |" in table
    assert "| b1=1_b2=1_b3=1 - b1=0_b2=0_b3=0 | 4, 2 |" in table  # pooled runs behind the claim
    assert "(teacherless)" in table and "(truncated, not distilled)" in table


def test_ablation_config_rejects_bad_seed_settings():
    with pytest.raises(UserError, match="distill_seeds=0"):
        load_config(AblationConfig, overrides=["distill_seeds=0"])
    with pytest.raises(UserError, match=r"seeded_points: \[1.0, 1.0\]"):
        load_config(AblationConfig, overrides=["seeded_points=[[1, 1]]"])
