"""ELECTRA distillation / pretraining runs: config, model construction, and the run function behind
`python -m electra_kd distill --config C.yaml [--set ...] --output-dir DIR`."""
from __future__ import annotations

from dataclasses import dataclass, field

from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from kd_core.config import out_of_range
from kd_core.data import MaskingConfig
from kd_core.engine import TrainConfig
from kd_core.errors import UserError
from kd_core.run import DataConfig, Job, launch
from kd_core.student import StudentConfig, build_student, load_complete

from .objective import ElectraLossConfig, ElectraObjective, loss_weights, tie_generator_embeddings


@dataclass
class GeneratorConfig:
    path: str | None = None  # a pretrained ElectraForMaskedLM; empty: a new one, trained jointly
    width_fraction: float = 0.25  # new generator: hidden size = fraction x discriminator's (ELECTRA: 1/4-1/3)
    num_layers: int | None = None  # new generator: default the student's depth
    tie_embeddings: bool = True  # share token/position embeddings with the student (new generators)

    def problems(self) -> list[str]:
        return out_of_range([(not 0 < self.width_fraction <= 1, f"width_fraction={self.width_fraction}: give a value "
                                                                 "in (0, 1] (ELECTRA: 1/4 to 1/3)")])


@dataclass
class ElectraRunConfig:
    teacher: str = ""  # an ElectraForPreTraining discriminator: the student's shape/init source, and teacher
    student: StudentConfig = field(default_factory=lambda: StudentConfig(num_layers=3))
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=lambda: MaskingConfig(replace=(0.85, 0.0, 0.15), whole_word=False))
    loss: ElectraLossConfig = field(default_factory=ElectraLossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(mixed_precision="auto"))


def new_generator(student: ElectraForPreTraining, cfg: GeneratorConfig) -> ElectraForMaskedLM:
    s = student.config
    heads = max(1, s.num_attention_heads // round(1 / cfg.width_fraction))
    hidden = max(heads, round(s.hidden_size * cfg.width_fraction / heads) * heads)
    gen = ElectraForMaskedLM(ElectraConfig(
        vocab_size=s.vocab_size, embedding_size=s.embedding_size, hidden_size=hidden,
        num_hidden_layers=cfg.num_layers or s.num_hidden_layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=s.max_position_embeddings,
        pad_token_id=s.pad_token_id, type_vocab_size=s.type_vocab_size))
    if cfg.tie_embeddings:
        tie_generator_embeddings(gen, student)
    return gen


def build(cfg: ElectraRunConfig) -> Job:
    if not cfg.teacher:
        raise UserError("no teacher: set `teacher:` (an ELECTRA discriminator; it also gives the student its shape)")
    teacher = load_complete(ElectraForPreTraining, cfg.teacher, "ELECTRA discriminator (teacher)")
    student, layer_map, report = build_student(teacher, cfg.student, model_class=ElectraForPreTraining)
    if cfg.generator.path:
        generator = load_complete(ElectraForMaskedLM, cfg.generator.path, "ELECTRA generator")
    else:
        generator = new_generator(student, cfg.generator)
        if not cfg.loss.train_generator:
            raise UserError("a new generator must be trained: set loss.train_generator=true, or give generator.path")
    distilling = any((cfg.loss.b1, cfg.loss.b2, cfg.loss.b3))
    weights = loss_weights(cfg.loss, distilling)
    objective = ElectraObjective(student, generator, weights, cfg.loss, teacher if distilling else None, layer_map)
    # the generator is saved beside the student, for reuse as a frozen one
    return Job(objective, init_report={k: v for k, v in report.items() if k != "copied"},
               save_beside={"generator": generator})


def run(cfg: ElectraRunConfig, output_dir: str, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
    return launch(cfg, lambda tokenizer: build(cfg), output_dir, resume, overwrite, tokenizer_source=cfg.teacher)
