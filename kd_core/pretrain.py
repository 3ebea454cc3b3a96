"""Masked-LM training through the engine, with no teacher.

The MLM-only baseline of the HerBERT scenarios (S1/S3), the MLM adaptation of a teacher's head,
and the engine's end-to-end check. `python -m kd_core.pretrain --config C.yaml --output-dir DIR
[--set section.key=value ...] [--resume]`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig

from .checkpoint import seed_everything
from .cli import run_and_report
from .config import load_config
from .data import MaskingCollator, MaskingConfig, open_corpus, read_stats
from .engine import Engine, TrainConfig
from .heads import masked_lm_loss
from .student import load_masked_lm
from .objective import Objective


@dataclass
class ArchConfig:
    """Shape of a randomly initialised BERT (used when model.init is empty)."""
    num_hidden_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 2
    intermediate_size: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1


@dataclass
class ModelConfig:
    init: str | None = None  # a *ForMaskedLM checkpoint (directory or hub name); empty: random BERT
    arch: ArchConfig = field(default_factory=ArchConfig)


@dataclass
class DataConfig:
    corpus: str = ""  # a directory prepared by `python -m kd_core.data prepare`
    tokenizer: str | None = None  # default: model.init, else the tokenizer the corpus was built with


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"mlm": 1.0})


class MaskedLMObjective(Objective):
    """The student's own masked-LM cross-entropy, at masked positions only."""

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"mlm": masked_lm_loss(self.student, batch)}


def check_compatible(model, tokenizer, max_len: int) -> None:
    """Vocab and length checks that otherwise surface as CUDA index errors deep in a run."""
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"vocab mismatch: tokenizer '{tokenizer.name_or_path}' has {len(tokenizer)} tokens but "
                         f"the model's embedding has {model.config.vocab_size}; use the model's own tokenizer")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_len > limit:
        raise ValueError(f"sequence length {max_len} is over the model's limit of {limit} positions; "
                         "prepare the corpus with a smaller --max-len")


def build_model(cfg: PretrainConfig, tokenizer, max_len: int):
    if cfg.model.init:
        model = load_masked_lm(cfg.model.init)
    else:
        a = cfg.model.arch
        model = AutoModelForMaskedLM.from_config(BertConfig(
            vocab_size=len(tokenizer), max_position_embeddings=max(512, max_len),
            num_hidden_layers=a.num_hidden_layers, hidden_size=a.hidden_size,
            num_attention_heads=a.num_attention_heads, intermediate_size=a.intermediate_size,
            hidden_dropout_prob=a.hidden_dropout_prob, attention_probs_dropout_prob=a.attention_probs_dropout_prob,
            pad_token_id=tokenizer.pad_token_id))
    check_compatible(model, tokenizer, max_len)
    return model


def run(cfg: PretrainConfig, output_dir: str, resume: bool = False) -> dict[str, float]:
    seed_everything(cfg.train.seed)
    stats = read_stats(cfg.data.corpus)
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer or cfg.model.init or stats["tokenizer"])
    train_rows = open_corpus(cfg.data.corpus, tokenizer, "train")
    valid_rows = open_corpus(cfg.data.corpus, tokenizer, "valid")
    model = build_model(cfg, tokenizer, stats["max_len"])
    collate = MaskingCollator.for_corpus(cfg.masking, tokenizer, cfg.data.corpus)
    engine = Engine(cfg.train, MaskedLMObjective(model), cfg.loss_weights, train_rows, collate, output_dir,
                    cfg, tokenizer=tokenizer, eval_rows=valid_rows if len(valid_rows) else None, resume=resume)
    return engine.fit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_core.pretrain", description=__doc__)
    parser.add_argument("--config", help="YAML config (sections: model, data, masking, train, loss_weights)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    args = parser.parse_args(argv)
    return run_and_report(lambda: run(load_config(PretrainConfig, args.config, args.overrides), args.output_dir,
                                      args.resume), args.output_dir)

if __name__ == "__main__":
    sys.exit(main())
