"""The training engine: schedules, optimizer groups, logging contract, non-finite handling, checkpoints."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer

from helpers import engine_on_corpus, faulty_mlm, tiny_pretrain_config
from kd_core import pretrain
from kd_core.checkpoint import complete_checkpoints, newest_checkpoint, read_state
from kd_core.engine import NonFiniteLossError
from kd_core.errors import UserError
from kd_core.sampler import GlobalBatchSampler
from kd_core.metrics_log import read_metrics, recorded_wall_s
from kd_core.objective import weighted_total
from kd_core.optim import build_scheduler, param_groups, warmup_steps


# ---- schedules and optimizer ------------------------------------------------------------------
def _lrs(name: str, total: int, warm: int, base: float = 1.0) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = build_scheduler(opt, name, total, warm)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_linear_schedule_values():
    lrs = _lrs("linear", total=10, warm=2)
    expected = [s / 2 if s < 2 else (10 - s) / 8 for s in range(10)]
    assert lrs == pytest.approx(expected)


def test_cosine_schedule_values():
    lrs = _lrs("cosine", total=20, warm=4)
    expected = [s / 4 if s < 4 else 0.5 * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(20)]
    assert lrs == pytest.approx(expected)


def test_constant_schedule_and_warmup_ratio():
    assert _lrs("constant", total=6, warm=2) == pytest.approx([0, 0.5, 1, 1, 1, 1])
    assert warmup_steps(1000, 0, 0.1) == 100
    assert warmup_steps(1000, 7, 0.0) == 7
    with pytest.raises(UserError, match="not both"):
        warmup_steps(1000, 7, 0.1)


def test_no_weight_decay_on_bias_and_layernorm():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    decay, plain = param_groups(model, 0.01)
    assert decay["lr"] == plain["lr"] == 1.0
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in plain["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


def test_weighted_total_requires_matching_weights():
    terms = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    total, weighted = weighted_total(terms, {"a": 0.5, "b": 2.0, "c": 0.0})
    assert total.item() == pytest.approx(7.0) and weighted["b"].item() == pytest.approx(6.0)
    with pytest.raises(UserError, match=r"\['b'\] have no weight"):
        weighted_total(terms, {"a": 1.0})
    with pytest.raises(UserError, match=r"\['c'\] that the objective did not compute"):
        weighted_total(terms, {"a": 1.0, "b": 1.0, "c": 1.0})


def test_global_batch_sampler_splits_one_global_batch_across_processes():
    one = GlobalBatchSampler(40, batch_size=8, micro_batch_size=2, rank=0, world=1, seed=3)
    two = [GlobalBatchSampler(40, batch_size=8, micro_batch_size=2, rank=r, world=2, seed=3) for r in (0, 1)]
    it1, it2 = iter(one), [iter(s) for s in two]
    for _ in range(7):  # crosses an epoch boundary (5 batches per epoch)
        micro1 = [next(it1) for _ in range(4)]
        micro2 = [next(it2[0]), next(it2[1]), next(it2[0]), next(it2[1])]
        assert micro1 == micro2
    with pytest.raises(UserError, match="multiple of micro_batch_size"):
        GlobalBatchSampler(40, batch_size=6, micro_batch_size=4, rank=0, world=1, seed=0)


# ---- end-to-end contract ------------------------------------------------------------------------
def test_metrics_jsonl_and_tensorboard_contents(tiny_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_pretrain_config(tiny_corpus, eval_every=6)
    cfg.loss_weights = {"mlm": 2.0}
    out = tmp_path / "run"
    pretrain.run(cfg, str(out))
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "loss/total" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    for key in ("loss/mlm", "weighted/mlm", "loss/total", "lr", "grad_norm", "tokens_per_s", "loss_scale",
                "skipped/overflow", "skipped/nonfinite", "tokens_seen", "epoch"):
        assert key in train[0], key
    for r in train:
        assert r["weighted/mlm"] == pytest.approx(2.0 * r["loss/mlm"], rel=1e-5)
        assert r["loss/total"] == pytest.approx(r["weighted/mlm"], rel=1e-5)
        assert r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    assert train[-1]["loss/mlm"] < train[0]["loss/mlm"]
    evals = [r for r in records if "eval/loss/mlm" in r]
    assert [r["step"] for r in evals] == [6, 12]

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for key in ("loss/mlm", "weighted/mlm", "loss/total", "lr", "grad_norm", "tokens_per_s", "eval/loss/mlm"):
        assert key in tags["scalars"], key
    tb_loss = {e.step: e.value for e in acc.Scalars("loss/mlm")}
    assert tb_loss == pytest.approx({r["step"]: r["loss/mlm"] for r in train})
    assert "config/text_summary" in tags["tensors"]
    assert acc.PluginTagToContent("hparams"), "hparams summary missing"
    saved = (out / "config.yaml").read_text()
    assert "mlm: 2.0" in saved and f"corpus: {tiny_corpus}" in saved


def test_final_model_round_trips_through_from_pretrained(tiny_corpus, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    out = tmp_path / "run"
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=2), str(out))
    mlm = AutoModelForMaskedLM.from_pretrained(out / "final")
    saved = load_file(out / "final" / "model.safetensors")
    for name, p in mlm.state_dict().items():
        if name in saved:
            assert torch.equal(p, saved[name])
    AutoModelForSequenceClassification.from_pretrained(out / "final", num_labels=2)
    AutoTokenizer.from_pretrained(out / "final")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only check")
def test_fp16_on_cpu_is_refused(tiny_corpus, tmp_path):
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        pretrain.run(tiny_pretrain_config(tiny_corpus, mixed_precision="fp16"), str(tmp_path / "run"))


def test_bf16_autocast_runs_on_cpu(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny_pretrain_config(tiny_corpus, mixed_precision="bf16", max_steps=4), str(out))
    last = [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r][-1]
    assert math.isfinite(last["loss/total"])


# ---- non-finite losses -------------------------------------------------------------------------
def test_nonfinite_step_is_skipped_and_counted(tiny_corpus, tiny_tokenizer, tmp_path):
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=6, log_every=1, micro_batch_size=8)
    model = pretrain.build_model(cfg, tiny_tokenizer)
    engine = engine_on_corpus(cfg, faulty_mlm(model, bad_calls={3}), tiny_tokenizer, tiny_corpus, tmp_path / "run")
    before_third = {}

    original_step = engine.step

    def spy(micro):
        if engine.step_count == 2:
            before_third.update({k: v.clone() for k, v in model.state_dict().items()})
        out = original_step(micro)
        if engine.step_count == 2:  # the skipped step changed no parameter
            for k, v in model.state_dict().items():
                assert torch.equal(v, before_third[k]), k
        return out

    engine.step = spy
    engine.fit()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "step" in r and "lr" in r]
    assert [r["skipped/nonfinite"] for r in records] == [0, 0, 1, 1, 1, 1]
    assert "loss/mlm" not in records[2]  # the skipped step contributes no loss value
    assert all(math.isfinite(r["loss/mlm"]) for r in records if "loss/mlm" in r)


def test_consecutive_nonfinite_stops_with_checkpoint(tiny_corpus, tiny_tokenizer, tmp_path):
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=20, micro_batch_size=8, max_consecutive_nonfinite=3)
    model = pretrain.build_model(cfg, tiny_tokenizer)
    engine = engine_on_corpus(cfg, faulty_mlm(model, bad_calls={5, 6, 7}), tiny_tokenizer, tiny_corpus,
                     tmp_path / "run")
    with pytest.raises(NonFiniteLossError) as e:
        engine.fit()
    message = str(e.value)
    assert "step 7" in message and "['mlm']" in message and "3 consecutive" in message
    ckpt = newest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "checkpoint-7" and ckpt.name in message
    assert read_state(ckpt)["skipped_nonfinite"] == 3
    saved = load_file(ckpt / "student" / "model.safetensors")
    for k, v in saved.items():  # the checkpoint holds the last good parameters (those after step 4)
        assert torch.equal(v, model.state_dict()[k].cpu()), k


# ---- checkpoints --------------------------------------------------------------------------------
def test_killed_save_leaves_nothing_resume_would_pick(tiny_corpus, tiny_tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=8, save_every=4)
    model = pretrain.build_model(cfg, tiny_tokenizer)
    engine = engine_on_corpus(cfg, pretrain.MaskedLMObjective(model, cfg.loss_weights), tiny_tokenizer, tiny_corpus, out)
    import kd_core.engine as engine_module

    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, path, *a, **k):
        calls["n"] += 1
        if "checkpoint-8" in str(path) and "optimizer" in str(path):
            raise SystemExit("killed mid-save")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(engine_module.torch, "save", dying_save)
    with pytest.raises(SystemExit):
        engine.fit()
    assert (out / "checkpoint-8.tmp").exists() and not (out / "checkpoint-8").exists()
    assert [s for s, _ in complete_checkpoints(out)] == [4]
    monkeypatch.setattr(engine_module.torch, "save", real_save)
    resumed = engine_on_corpus(cfg, pretrain.MaskedLMObjective(pretrain.build_model(cfg, tiny_tokenizer), cfg.loss_weights),
                      tiny_tokenizer, tiny_corpus, out, resume=True)
    assert resumed.step_count == 4


def test_keep_last_k_checkpoints(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=10, save_every=2, keep_checkpoints=2), str(out))
    assert [s for s, _ in complete_checkpoints(out)] == [8, 10]
    state = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["step"] == 10 and state["data_position"] == 10
    for name in ("extras.pt", "optimizer.pt", "scheduler.pt", "config.yaml", "student/config.json"):
        assert (out / "checkpoint-10" / name).exists(), name


def test_resume_in_process_matches_uninterrupted(tiny_corpus, tmp_path):
    """Train 10 steps; separately train 6, then resume to 10: every parameter identical."""
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=10), str(full))
    # a run that stopped after its step-6 checkpoint: remove what it wrote later
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=10, save_every=6), str(part))
    for later in (part / "checkpoint-10", part / "final"):
        shutil.rmtree(later)
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=10, save_every=6), str(part), resume=True)
    a, b = load_file(full / "final" / "model.safetensors"), load_file(part / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [r["step"] for r in read_metrics(part / "metrics.jsonl") if "lr" in r]
    assert lines == sorted(set(lines)), "metrics after the checkpoint must not be duplicated on resume"
    walls = [r["wall_s"] for r in read_metrics(part / "metrics.jsonl") if "lr" in r]
    assert walls == sorted(walls) and walls[0] > 0, "wall time goes on from the checkpoint's, not from 0"
    assert recorded_wall_s(part) == walls[-1]


def test_group_by_length_batches_similar_lengths_and_covers_every_row():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, size=1000)
    sampler = GlobalBatchSampler(1000, batch_size=10, micro_batch_size=10, rank=0, world=1, seed=1, lengths=lengths)
    it = iter(sampler)
    batches = [[i for i, _ in next(it)] for _ in range(sampler.n_batches)]
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    plain = iter(GlobalBatchSampler(1000, batch_size=10, micro_batch_size=10, rank=0, world=1, seed=1))
    plain_spread = np.mean([np.ptp(lengths[[i for i, _ in next(plain)]]) for _ in range(100)])
    assert spread < plain_spread / 5
    again = iter(GlobalBatchSampler(1000, 10, 10, 0, 1, seed=1, start_batch=37, lengths=lengths))
    assert [i for i, _ in next(again)] == batches[37]  # resumable: batch k depends only on (seed, k)


def test_layerwise_lr_decay_groups(tiny_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=3,
                                                     num_attention_heads=2, intermediate_size=16))
    groups = param_groups(model, 0.01, lr=1.0, layer_decay=0.5, n_layers=3)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.classifier.weight)] == 1.0
    assert lr_of[id(model.bert.encoder.layer[2].output.dense.weight)] == 0.5
    assert lr_of[id(model.bert.encoder.layer[0].output.dense.weight)] == 0.125
    assert lr_of[id(model.bert.embeddings.word_embeddings.weight)] == 0.0625
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_engines_with_different_precisions_in_one_process(tiny_corpus, tmp_path):
    """A bf16 distillation followed by an fp32 fine-tuning in the same process (recipes do this)."""
    pretrain.run(tiny_pretrain_config(tiny_corpus, mixed_precision="bf16", max_steps=2), str(tmp_path / "a"))
    pretrain.run(tiny_pretrain_config(tiny_corpus, mixed_precision="no", max_steps=2), str(tmp_path / "b"))
    assert (tmp_path / "b" / "final" / "model.safetensors").is_file()


def test_smoothed_masking_runs_from_the_corpus_counts(tiny_corpus, tmp_path):
    """masking.smoothing reads the prepared corpus's token counts (no extra file to pass)."""
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=2)
    cfg.masking.smoothing = 0.7
    pretrain.run(cfg, str(tmp_path / "run"))
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["loss/mlm"] > 0


def test_resume_refuses_a_different_config(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=4, save_every=2), str(out))
    with pytest.raises(UserError, match=r"config differs from the checkpoint's in \['train.weight_decay'\]"):
        pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=8, save_every=2, weight_decay=0.5), str(out),
                     resume=True)
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=8, save_every=2), str(out), resume=True)  # longer: fine
    assert json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["step"] == 8


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_it_faster(monkeypatch):
    from kd_core import precision

    for vendor, flags, want in [("GenuineIntel", {"avx512f", "avx512_bf16", "amx_bf16"}, "bf16"),
                                ("AuthenticAMD", {"avx512f", "avx512_bf16"}, "bf16"),
                                ("GenuineIntel", {"avx512f", "avx512_bf16"}, "no"),  # same rate as fp32 FMAs
                                ("AuthenticAMD", {"avx2", "avx512f"}, "no")]:  # bf16 emulated
        monkeypatch.setattr(precision, "cpu_info", lambda: (vendor, flags))
        assert precision.resolve("auto", "cpu")[0] == want, (vendor, flags)
    assert precision.resolve("bf16", "cpu") == ("bf16", "as configured")
