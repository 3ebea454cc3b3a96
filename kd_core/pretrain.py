"""Masked-LM training through the engine, with no teacher.

The MLM-only baseline of the HerBERT scenarios (S1/S3), the MLM adaptation of a teacher's head,
and the engine's end-to-end check. `python -m kd_core.pretrain --config C.yaml --output-dir DIR
[--set section.key=value ...] [--resume]`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import AutoModelForMaskedLM, BertConfig

from .cli import add_run_arguments, run_and_report
from .config import load_config
from .data import MaskingConfig
from .engine import TrainConfig
from .heads import masked_lm_loss
from .objective import Objective
from .run import DataConfig, Job, launch
from .student import load_masked_lm


@dataclass
class ArchConfig:
    """Shape of a randomly initialised BERT (used when model.init is empty)."""
    num_hidden_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 2
    intermediate_size: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512


@dataclass
class ModelConfig:
    init: str | None = None  # a *ForMaskedLM checkpoint (directory or hub name); empty: random BERT
    arch: ArchConfig = field(default_factory=ArchConfig)
    train_only: Literal["all", "head"] = "all"  # head: the encoder (and a decoder tied to its embeddings) frozen


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"mlm": 1.0})


class MaskedLMObjective(Objective):
    """The student's own masked-LM cross-entropy, at masked positions only."""

    def __init__(self, student, weights: dict[str, float]):
        super().__init__(student, None, weights)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"mlm": masked_lm_loss(self.student, batch)}


def build_model(cfg: PretrainConfig, tokenizer):
    model = _new_model(cfg, tokenizer)
    if cfg.model.train_only == "head":  # the optimizer takes only parameters that require a gradient
        model.base_model.requires_grad_(False)
    return model


def _new_model(cfg: PretrainConfig, tokenizer):
    if cfg.model.init:
        return load_masked_lm(cfg.model.init, new_head=True)
    a = cfg.model.arch
    return AutoModelForMaskedLM.from_config(BertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=a.max_position_embeddings,
        num_hidden_layers=a.num_hidden_layers, hidden_size=a.hidden_size,
        num_attention_heads=a.num_attention_heads, intermediate_size=a.intermediate_size,
        hidden_dropout_prob=a.hidden_dropout_prob, attention_probs_dropout_prob=a.attention_probs_dropout_prob,
        pad_token_id=tokenizer.pad_token_id))


def run(cfg: PretrainConfig, output_dir: str, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    def build(tokenizer) -> Job:
        return Job(MaskedLMObjective(build_model(cfg, tokenizer), cfg.loss_weights))
    return launch(cfg, build, output_dir, resume, overwrite, tokenizer_source=cfg.model.init)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_core.pretrain", description=__doc__)
    add_run_arguments(parser, "model, data, masking, train, loss_weights")
    args = parser.parse_args(argv)
    return run_and_report(lambda: run(load_config(PretrainConfig, args.config, args.overrides), args.output_dir,
                                      args.resume, args.overwrite), args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
