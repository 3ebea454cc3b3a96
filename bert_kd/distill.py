"""Task-agnostic DistilBERT-style distillation: a config, a run function, and the CLI behind
`python -m bert_kd distill --config recipes/configs/<name>.yaml [--set ...] --output-dir DIR`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from kd_core.checkpoint import seed_everything
from kd_core.data import MaskingCollator, MaskingConfig, open_corpus, read_stats
from kd_core.engine import Engine, TrainConfig
from kd_core.pretrain import DataConfig, check_compatible
from kd_core.student import StudentConfig, build_student, load_masked_lm

from .objective import DistillationObjective, DistilLossConfig


@dataclass
class DistilConfig:
    teacher: str = ""  # a *ForMaskedLM checkpoint: local directory or hub name
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: DistilLossConfig = field(default_factory=DistilLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # DistilBERT (Sanh et al.): 5 * L_ce + 2 * L_mlm + 1 * L_cos, T = 2
    loss_weights: dict[str, float] = field(default_factory=lambda: {"ce": 5.0, "mlm": 2.0, "cos": 1.0})


def build(cfg: DistilConfig):
    """(objective, tokenizer, init report) for a config; the teacher is loaded frozen."""
    if not cfg.teacher:
        raise ValueError("no teacher: set `teacher:` in the config or --set teacher=PATH")
    teacher = load_masked_lm(cfg.teacher)
    student, layer_map, report = build_student(teacher, cfg.student)
    objective = DistillationObjective(student, teacher, layer_map, cfg.loss_weights, cfg.loss)
    tokenizer = AutoTokenizer.from_pretrained(cfg.data.tokenizer or cfg.teacher)
    return objective, tokenizer, report


def run(cfg: DistilConfig, output_dir: str, resume: bool = False) -> dict[str, float]:
    seed_everything(cfg.train.seed)
    objective, tokenizer, report = build(cfg)
    stats = read_stats(cfg.data.corpus)
    check_compatible(objective.teacher, tokenizer, stats["max_len"])
    check_compatible(objective.student, tokenizer, stats["max_len"])
    train_rows = open_corpus(cfg.data.corpus, tokenizer, "train")
    valid_rows = open_corpus(cfg.data.corpus, tokenizer, "valid")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "student_init.json").write_text(json.dumps(report, indent=1))
    collate = MaskingCollator.for_corpus(cfg.masking, tokenizer, cfg.data.corpus)
    engine = Engine(cfg.train, objective, cfg.loss_weights, train_rows, collate, output_dir, cfg,
                    tokenizer=tokenizer, eval_rows=valid_rows if len(valid_rows) else None, resume=resume)
    return engine.fit()
