"""Task-agnostic DistilBERT-style distillation: a config, a run function, and the CLI behind
`python -m bert_kd distill --config recipes/configs/<name>.yaml [--set ...] --output-dir DIR`."""
from __future__ import annotations

from dataclasses import dataclass, field

from kd_core.data import MaskingConfig
from kd_core.engine import TrainConfig
from kd_core.errors import UserError
from kd_core.run import DataConfig, Job, launch
from kd_core.student import StudentConfig, build_student, load_masked_lm

from .objective import DistillationObjective, DistilLossConfig


@dataclass
class DistilConfig:
    teacher: str = ""  # a *ForMaskedLM checkpoint: local directory or hub name
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: DistilLossConfig = field(default_factory=DistilLossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(mixed_precision="auto"))
    # DistilBERT (Sanh et al.): 5 * L_ce + 2 * L_mlm + 1 * L_cos, T = 2
    loss_weights: dict[str, float] = field(default_factory=lambda: {"ce": 5.0, "mlm": 2.0, "cos": 1.0})


def build(cfg: DistilConfig) -> tuple[DistillationObjective, dict]:
    """(objective, init report) for a config; the teacher is loaded frozen."""
    if not cfg.teacher:
        raise UserError("no teacher: set `teacher:` in the config or --set teacher=PATH")
    teacher = load_masked_lm(cfg.teacher)
    student, layer_map, report = build_student(teacher, cfg.student)
    return DistillationObjective(student, teacher, layer_map, cfg.loss_weights, cfg.loss), report


def run(cfg: DistilConfig, output_dir: str, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    def job(tokenizer) -> Job:
        objective, report = build(cfg)
        return Job(objective, init_report=report)
    return launch(cfg, job, output_dir, resume, overwrite, tokenizer_source=cfg.teacher)
