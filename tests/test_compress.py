"""Structured pruning and int8 quantization (kd_core.compress) on tiny random models."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM,
                          BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification,
                          ElectraConfig, ElectraForPreTraining, RobertaConfig, RobertaForSequenceClassification)

from kd_core.compress.__main__ import main
from kd_core.compress.importance import importance, per_unit, unit_masks
from kd_core.compress.prune import least_important
from kd_core.compress.quantize import load_quantized, quantize, save_quantized
from kd_core.compress.structure import ffn_counts, head_counts, is_stock_loadable, load_pruned, prune_model, save_pruned
from kd_core.families import family_of

SMALL = dict(vocab_size=120, max_position_embeddings=40, pad_token_id=0, initializer_range=0.2)
BERT_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **SMALL)
MODELS = {
    "bert": lambda: BertForMaskedLM(BertConfig(**BERT_SIZES)),
    "distilbert": lambda: DistilBertForSequenceClassification(DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=48, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,
        **SMALL)),
    "electra": lambda: ElectraForPreTraining(ElectraConfig(embedding_size=16, **BERT_SIZES)),
    "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(
        **{**BERT_SIZES, "max_position_embeddings": 44, "pad_token_id": 1, "type_vocab_size": 1,
           "classifier_dropout": 0.0})),
}
KEEP_HEADS = [torch.tensor([1, 3]), torch.tensor([0, 2, 3])]  # a different count per layer
KEEP_NEURONS = [torch.arange(0, 48, 2), torch.arange(5, 45)]


def inputs(n: int = 3, length: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 120, (n, length), generator=torch.Generator().manual_seed(seed))
    attention = torch.ones_like(ids)
    attention[0, -3:] = 0  # padding counts too
    return {"input_ids": ids, "attention_mask": attention}


def binary_masks(model, heads, neurons):
    """0/1 masks (one row, for every example) that switch off the units not kept."""
    head_masks, neuron_masks = per_unit(model, 0.0, rows=1)
    for mask, keep in zip(head_masks + neuron_masks, heads + neurons):
        mask[0, keep] = 1.0
    return head_masks, neuron_masks


@pytest.mark.parametrize("family", sorted(MODELS))
@torch.no_grad()
def test_pruned_model_computes_what_the_masked_model_computes_and_reloads(family, tmp_path):
    torch.manual_seed(0)
    model = MODELS[family]().eval()
    with unit_masks(model, *binary_masks(model, KEEP_HEADS, KEEP_NEURONS)):
        masked = model(**inputs()).logits
    pruned = copy.deepcopy(model)
    prune_model(pruned, KEEP_HEADS, KEEP_NEURONS)
    assert head_counts(pruned) == [2, 3] and ffn_counts(pruned) == [24, 40]
    assert torch.allclose(pruned(**inputs()).logits, masked, atol=1e-6)
    assert not torch.allclose(model(**inputs()).logits, masked, atol=1e-3)  # the masks did something

    save_pruned(pruned, None, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["kept_heads"] == [[1, 3], [0, 2, 3]] and config["ffn_sizes"] == [24, 40]
    reloaded = load_pruned(tmp_path / "pruned", type(model))
    assert torch.equal(reloaded(**inputs()).logits, pruned(**inputs()).logits)
    assert not is_stock_loadable(reloaded.config)
    with pytest.raises(Exception, match="size"):  # the stock config cannot describe these shapes
        type(model).from_pretrained(tmp_path / "pruned")


@torch.no_grad()
def test_uniform_ffn_pruning_loads_with_plain_from_pretrained(tmp_path):
    torch.manual_seed(0)
    model = MODELS["distilbert"]().eval()
    prune_model(model, [torch.arange(4)] * 2, [torch.tensor([1, 4, 7, 9])] * 2)
    save_pruned(model, None, tmp_path / "m")
    assert is_stock_loadable(model.config) and model.config.hidden_dim == 4
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(plain(**inputs()).logits, model(**inputs()).logits)


def tiny_classifier(seed: int = 0, num_labels: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**BERT_SIZES, num_labels=num_labels)).eval()


def test_importance_is_the_per_example_sum_of_grad_times_weight_over_each_unit():
    """E_x |sum over the unit's output-projection weights of dL(x)/dW * W|, computed example by example
    from the parameter gradients, equals the head-mask gradients of one batched backward."""
    model = tiny_classifier()
    batch = {**inputs(), "labels": torch.tensor([0, 1, 1])}
    heads, neurons = importance(model, [batch], "task")
    layers = family_of(model).encoder_layers(model)
    expected_heads = torch.zeros(2, 4)
    expected_neurons = torch.zeros(2, 48)
    for b in range(3):
        model.zero_grad()
        one = {k: v[b:b + 1] for k, v in batch.items()}
        F.cross_entropy(model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits,
                        one["labels"]).backward()
        for i, layer in enumerate(layers):
            w_o, w_2 = layer.attention.output.dense.weight, layer.output.dense.weight
            expected_heads[i] += (w_o.grad * w_o).sum(0).view(4, 8).sum(1).abs() / 3  # head h: columns 8h..8h+7
            expected_neurons[i] += (w_2.grad * w_2).sum(0).abs() / 3
    assert torch.allclose(torch.stack(heads), expected_heads, rtol=1e-4, atol=1e-9)
    assert torch.allclose(torch.stack(neurons), expected_neurons, rtol=1e-4, atol=1e-9)
    assert torch.stack(heads).min() > 0


def test_exact_kl_has_no_gradient_at_the_unpruned_model_so_kl_importance_samples_its_targets():
    model = tiny_classifier()
    batch = inputs()
    heads, neurons = per_unit(model, 1.0, rows=3, grad=True)
    with unit_masks(model, heads, neurons):
        p = model(**batch).logits
    q = p.detach()
    (F.softmax(q, -1) * (F.log_softmax(q, -1) - F.log_softmax(p, -1))).sum().backward()
    assert all(h.grad.abs().max() < 1e-7 for h in heads + neurons)
    scores, _ = importance(model, [batch], "kl", reference=copy.deepcopy(model))
    assert torch.stack(scores).min() > 0 and torch.isfinite(torch.stack(scores)).all()
    again, _ = importance(model, [batch], "kl", reference=copy.deepcopy(model))
    assert torch.equal(torch.stack(scores), torch.stack(again))  # targets drawn with a fixed seed


def toy_task(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Label 1 when token 7 occurs in the sequence: learnable by a tiny encoder in seconds."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, 120, (n, 10), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    where = torch.randint(0, 10, (n,), generator=g)
    ids[labels.bool(), where[labels.bool()]] = 7
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.fixture(scope="module")
def trained_classifier():
    model = tiny_classifier(seed=1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(120):
        batch = toy_task(32, step)
        loss = F.cross_entropy(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize("mode", ["task", "kl"])
@torch.no_grad()
def test_removing_the_least_important_units_changes_the_loss_less_than_the_most_important(trained_classifier, mode):
    model = trained_classifier
    held_out = toy_task(256, 10_000)
    with torch.enable_grad():
        heads, neurons = importance(model, [toy_task(64, 20_000 + k) for k in range(4)], mode, model)
    base = model(input_ids=held_out["input_ids"]).logits

    def damage(h, n) -> float:
        pruned = copy.deepcopy(model)
        prune_model(pruned, h, n)
        logits = pruned(input_ids=held_out["input_ids"]).logits
        if mode == "task":
            return float(F.cross_entropy(logits, held_out["labels"]) - F.cross_entropy(base, held_out["labels"]))
        return float(F.kl_div(F.log_softmax(logits, -1), F.log_softmax(base, -1), log_target=True, reduction="batchmean"))

    all_heads, all_neurons = [torch.arange(4)] * 2, [torch.arange(48)] * 2
    assert damage(least_important(heads, 4), all_neurons) < damage(least_important([-s for s in heads], 4), all_neurons)
    assert damage(all_heads, least_important(neurons, 48)) < damage(all_heads, least_important([-s for s in neurons], 48))


@torch.no_grad()
def test_int8_logits_stay_within_tolerance_of_fp32_and_reload(tmp_path, tiny_tokenizer):
    """Tolerance: every logit within 5% of the largest fp32 |logit|, every probability within 0.01 (per-tensor
    int8 weights, dynamic int8 activations; weights drawn with std 0.05)."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{**BERT_SIZES, "hidden_size": 128, "intermediate_size": 256,
                                                        "initializer_range": 0.05})).eval()
    quantized = quantize(model)
    batch = inputs(8, 12)
    fp32, int8 = model(**batch).logits, quantized(**batch).logits
    assert (fp32 - int8).abs().max() <= 0.05 * fp32.abs().max()
    assert (fp32.softmax(-1) - int8.softmax(-1)).abs().max() <= 0.01
    assert not torch.equal(fp32, int8)  # it really computes in int8
    save_quantized(quantized, tiny_tokenizer, tmp_path / "q")
    assert torch.equal(load_quantized(tmp_path / "q")(**batch).logits, int8)
    torch.save(model.state_dict(), tmp_path / "fp32.pt")
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))
    saved = (tmp_path / "fp32.pt").stat().st_size - (tmp_path / "q" / "model_int8.pt").stat().st_size
    assert saved > 0.7 * linear_bytes  # int8 weights: a quarter of the Linear layers' fp32 bytes


@pytest.fixture(scope="module")
def toy_glue_classifier(tmp_path_factory):
    """A tiny BERT classifier saved with its tokenizer, and the generated RTE/STS-B GLUE folders."""
    from kd_core.toy import make_tokenizer, write_tiny_glue

    root = tmp_path_factory.mktemp("glue_model")
    tokenizer = make_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{**BERT_SIZES, "vocab_size": len(tokenizer),
                                                        "max_position_embeddings": 64}))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model", write_tiny_glue(root / "glue")


def test_prune_cli_reaches_the_target_in_steps_with_recovery_distillation(toy_glue_classifier, tmp_path):
    model_dir, glue = toy_glue_classifier
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(model_dir), "--output", str(out), "--task", "rte", "--glue-dir", str(glue),
                 "--target-heads", "0.5", "--target-ffn", "0.5", "--steps", "2", "--recover-steps", "2",
                 "--batches", "2", "--batch-size", "8", "--max-len", "32"]) == 0
    report = json.loads((out / "pruning.json").read_text())
    assert [sum(r["heads"]) for r in report["history"]] == [6, 4] and sum(report["history"][-1]["ffn"]) == 48
    assert {"loss/logits", "loss/hid"} <= set(report["history"][0]["recovery"])
    assert (out / "recovery" / "step2" / "metrics.jsonl").is_file()  # the recovery ran through the engine
    model = load_pruned(out, AutoModelForSequenceClassification)
    assert sum(head_counts(model)) == 4 and report["params_after"] < report["params_before"]
    assert not (tmp_path / "pruned.tmp").exists()


@pytest.mark.parametrize("family", ["bert", "electra"])
def test_prune_cli_self_supervised_on_a_corpus(family, tmp_path, tiny_tokenizer, tiny_corpus):
    """MLM teachers and ELECTRA discriminators, no labels: KL importance; --per-layer FFN-only pruning keeps
    a stock config that plain from_pretrained loads."""
    from kd_core.toy import tiny_bert_teacher, tiny_electra

    if family == "bert":
        tiny_bert_teacher(tmp_path / "model", tiny_tokenizer, layers=2)
        model_dir = tmp_path / "model"
    else:
        tiny_electra(tmp_path / "model", tiny_tokenizer, layers=2)
        model_dir = tmp_path / "model" / "discriminator"
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(model_dir), "--output", str(out), "--corpus", str(tiny_corpus),
                 "--importance", "kl", "--target-ffn", "0.25", "--per-layer", "--batches", "2", "--batch-size", "4",
                 "--recover-steps", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["ffn_sizes"] == [48, 48] and config["intermediate_size"] == 48
    plain = type(load_pruned(out, ElectraForPreTraining if family == "electra" else BertForMaskedLM)).from_pretrained(out)
    assert ffn_counts(plain) == [48, 48]


def test_quantize_cli_reports_fp32_and_int8_dev_scores(toy_glue_classifier, tmp_path):
    model_dir, glue = toy_glue_classifier
    assert main(["quantize", "--model", str(model_dir), "--output", str(tmp_path / "q"), "--task", "rte",
                 "--glue-dir", str(glue), "--max-len", "32"]) == 0
    info = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert set(info["dev"]) == {"fp32", "int8"} and "accuracy" in info["dev"]["int8"]
    assert info["bytes"] < info["fp32_bytes"]
    assert isinstance(load_quantized(tmp_path / "q"), BertForSequenceClassification)


def test_cli_bad_inputs_are_one_line_errors_and_leave_nothing(toy_glue_classifier, tmp_path, capsys):
    model_dir, glue = toy_glue_classifier
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "tokenizer_config.json").write_text("{}")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            (tmp_path / "gpt2" / name).write_text((model_dir / name).read_text())
    (tmp_path / "used").mkdir()
    regression = BertForSequenceClassification(BertConfig(**{**BERT_SIZES, "vocab_size": 200, "num_labels": 1,
                                                              "max_position_embeddings": 64}))
    regression.save_pretrained(tmp_path / "stsb_model")
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp_path / "stsb_model")
    data = ["--task", "rte", "--glue-dir", str(glue)]
    capsys.readouterr()  # the setup's save_pretrained progress bars
    cases = {
        "no such directory": ["prune", "--model", str(tmp_path / "missing"), "--target-heads", "0.5", *data],
        "share in [0, 1)": ["prune", "--model", str(model_dir), "--target-heads", "1.5", *data],
        "nothing to prune": ["prune", "--model", str(model_dir), *data],
        "already exists": ["prune", "--model", str(model_dir), "--target-heads", "0.5", *data, "--output-as-used"],
        "not a family kd_core knows": ["prune", "--model", str(tmp_path / "gpt2"), "--target-heads", "0.5", *data],
        "--task (with --glue-dir) or --corpus": ["prune", "--model", str(model_dir), "--target-heads", "0.5"],
        "without any": ["prune", "--model", str(model_dir), "--target-heads", "0.9", *data],
        "needs 1: give a model fine-tuned on stsb": ["prune", "--model", str(model_dir), "--target-ffn", "0.5",
                                                     "--task", "stsb", "--glue-dir", str(glue)],
        "regression head": ["prune", "--model", str(tmp_path / "stsb_model"), "--target-ffn", "0.5", "--importance",
                            "kl", "--task", "stsb", "--glue-dir", str(glue)],
        "quantize": ["quantize", "--model", str(tmp_path / "missing")],
    }
    for expected, argv in cases.items():
        output = tmp_path / ("used" if "--output-as-used" in argv else "out")
        argv = [a for a in argv if a != "--output-as-used"] + ["--output", str(output)]
        assert main(argv) == 2, expected
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, (expected, err)
        assert expected in err or expected == "quantize", (expected, err)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists(), expected


def test_overwrite_never_deletes_the_input_or_a_folder_it_did_not_write(toy_glue_classifier, tmp_path, capsys):
    model_dir, _ = toy_glue_classifier
    before = sorted(p.name for p in model_dir.iterdir())
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    for output, expected in ((model_dir, "overlaps --model"), (model_dir / "int8", "overlaps --model"),
                             (model_dir.parent, "overlaps --model"), (precious, "not a model this command wrote")):
        assert main(["quantize", "--model", str(model_dir), "--output", str(output), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err, err
    assert sorted(p.name for p in model_dir.iterdir()) == before and (precious / "notes.txt").read_text() == "keep me"
    assert main(["quantize", "--model", str(model_dir), "--output", str(tmp_path / "q")]) == 0
    assert main(["quantize", "--model", str(model_dir), "--output", str(tmp_path / "q"), "--overwrite"]) == 0


def test_compression_table_recipe_smoke(tmp_path):
    import compression_table

    assert compression_table.main(["--scale", "smoke", "--output-dir", str(tmp_path)]) == 0
    text = (tmp_path / "compression.md").read_text()
    for row in ("teacher", "teacher pruned", "teacher int8", "student", "student pruned", "student int8",
                "student pruned + int8"):
        assert f"| {row} |" in text
    rows = json.loads((tmp_path / "compression.json").read_text())["rows"]
    assert rows["teacher pruned"]["params_m"] < rows["teacher"]["params_m"]
    assert rows["student int8"]["mb"] < rows["student"]["mb"] and rows["student pruned"]["seeds"] == 2
    assert '"scale": "smoke"' in text and "compression_table.py" in text
