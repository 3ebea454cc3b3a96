"""ELECTRA discriminator distillation (Greek report, after Hentschel et al. 2021):

    L_kd = L_ce + b1 * L_mse + b2 * L_cos + b3 * L_kl,    L_mse = L_emb + L_out + L_hid + L_att

Teacher and student discriminators see the SAME corrupted input: one generator sample per batch.
- rtd: L_ce, the student's replaced-token-detection binary cross-entropy (its own task loss), non-pad
       tokens (logged as `rtd`, so it never shares a name with bert_kd's teacher KL `ce`)
- emb: MSE of embedding outputs (after ELECTRA's embeddings_project, i.e. at hidden width)
- out: MSE of the discriminator head's output activations (dense + activation, before the logit)
- hid: MSE of mapped layers' hidden states;  att: MSE of mapped layers' attention probabilities
- cos: 1 - cos of last hidden states;  kl: KL(teacher || student) of the per-token original/replaced
       distributions at temperature t, times t^2
Each L_mse part has its own sub-weight; the engine sees weight b1 * w_part for each part, so the
weighted parts add up to b1 * L_mse. Without a teacher (b1 = b2 = b3 = 0) this is ELECTRA
pretraining: the baseline a distilled student must beat at equal compute.
The generator is frozen (default when given a pretrained one) or trained jointly with its MLM loss
(`gen_mlm`, ELECTRA's L_MLM + lambda * L_disc with lambda = disc_weight).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kd_core import losses
from kd_core.heads import encoder_inputs
from kd_core.intermediate import IntermediateLosses
from kd_core.layer_map import LayerMap
from kd_core.objective import Objective

from .rtd import corrupt
from kd_core.config import out_of_range
from kd_core.errors import UserError

MSE_PARTS = ("emb", "out", "hid", "att")


@dataclass
class ElectraLossConfig:
    b1: float = 1.0  # L_mse
    b2: float = 1.0  # L_cos
    b3: float = 1.0  # L_kl
    mse_parts: dict[str, float] = field(default_factory=lambda: {p: 1.0 for p in MSE_PARTS})
    temperature: float = 2.0  # of L_kl
    disc_weight: float = 1.0  # weight of L_ce, the `rtd` term (ELECTRA pretraining uses 50 with gen_weight 1)
    gen_weight: float = 1.0  # weight of the generator's MLM loss when it is trained
    train_generator: bool = False
    sampling_temperature: float = 1.0

    def problems(self) -> list[str]:
        weights = {"b1": self.b1, "b2": self.b2, "b3": self.b3, "disc_weight": self.disc_weight,
                   "gen_weight": self.gen_weight}
        return out_of_range([(not v >= 0, f"{k}={v}: give a weight >= 0") for k, v in weights.items()] + [
            (not self.temperature > 0, f"temperature={self.temperature}: give a value > 0"),
            (not self.sampling_temperature >= 0, f"sampling_temperature={self.sampling_temperature}: give 0 (argmax) or more"),
        ])


def loss_weights(cfg: ElectraLossConfig, has_teacher: bool) -> dict[str, float]:
    unknown = sorted(set(cfg.mse_parts) - set(MSE_PARTS))
    if unknown:
        raise UserError(f"unknown L_mse part(s) {unknown}; parts: {list(MSE_PARTS)}")
    weights = {"rtd": cfg.disc_weight}
    if has_teacher:
        weights.update({p: cfg.b1 * cfg.mse_parts.get(p, 0.0) for p in MSE_PARTS})
        weights.update(cos=cfg.b2, kl=cfg.b3)
    elif cfg.b1 or cfg.b2 or cfg.b3:
        raise UserError("b1/b2/b3 weight distillation terms, which need a teacher; set them to 0 for "
                         "pretraining without a teacher")
    if cfg.train_generator:
        weights["gen_mlm"] = cfg.gen_weight
    return weights


def head_activations(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    head = model.discriminator_predictions
    return head.activation(head.dense(hidden))


def tie_generator_embeddings(generator: nn.Module, discriminator: nn.Module) -> None:
    """ELECTRA shares the token (and position, type) embeddings of generator and discriminator."""
    if generator.config.embedding_size != discriminator.config.embedding_size:
        raise UserError(f"tied embeddings need equal embedding_size (generator {generator.config.embedding_size},"
                         f" discriminator {discriminator.config.embedding_size})")
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.tie_weights()


class ElectraObjective(Objective):
    STUDENT_ONLY_TERMS = frozenset({"rtd", "gen_mlm"})

    def __init__(self, student: nn.Module, generator: nn.Module, weights: dict[str, float],
                 cfg: ElectraLossConfig, teacher: nn.Module | None = None, layer_map: LayerMap | None = None):
        super().__init__(student, teacher, weights)
        self.cfg = cfg
        self.generator = generator
        if not cfg.train_generator:
            generator.requires_grad_(False)
        if student.config.vocab_size != generator.config.vocab_size:
            raise UserError(f"vocab mismatch: generator {generator.config.vocab_size}, "
                             f"student {student.config.vocab_size}; they must share a tokenizer")
        s_width = student.config.hidden_size
        self.intermediate = None
        self.proj_out = None
        if teacher is not None:
            if teacher.config.vocab_size != student.config.vocab_size:
                raise UserError(f"vocab mismatch between teacher ({teacher.config.vocab_size}) and student "
                                 f"({student.config.vocab_size}) discriminators")
            t_width = teacher.config.hidden_size
            if "cos" in self.active and s_width != t_width:
                raise UserError(f"L_cos needs equal widths (student {s_width}, teacher {t_width}); set b2=0")
            self.intermediate = IntermediateLosses(self.active, s_width, t_width, layer_map)
            self.proj_out = nn.Linear(s_width, t_width) if "out" in self.active and s_width != t_width else None
            self.intermediate.attach(student, teacher)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.cfg.train_generator:
            self.generator.eval()
        return self

    def _encode(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        want = self.intermediate is not None
        return model.electra(**encoder_inputs(batch, model.electra),
                             output_hidden_states=want and self.intermediate.needs_hidden_states)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.cfg.train_generator:
            corrupted, gen_loss = corrupt(self.generator, batch, self.cfg.sampling_temperature, with_loss=True)
            terms["gen_mlm"] = gen_loss
        else:
            with torch.no_grad():
                corrupted, _ = corrupt(self.generator, batch, self.cfg.sampling_temperature)
        tokens = corrupted["attention_mask"].bool()
        s_out = self._encode(self.student, corrupted)
        s_hidden = s_out.last_hidden_state
        s_logits = self.student.discriminator_predictions(s_hidden)
        terms["rtd"] = nn.functional.binary_cross_entropy_with_logits(s_logits[tokens].float(),
                                                                     corrupted["rtd_labels"][tokens])
        if not self.uses_teacher:  # no teacher, or every teacher term weighted 0
            return terms
        with torch.no_grad():
            t_out = self._encode(self.teacher, corrupted)
        terms.update(self.intermediate(s_out, t_out, corrupted["attention_mask"]))
        if "out" in self.active:
            with torch.no_grad():
                t_act = head_activations(self.teacher, t_out.last_hidden_state)
            terms["out"] = losses.hidden_mse(head_activations(self.student, s_hidden), t_act, tokens, self.proj_out)
        if "cos" in self.active:
            terms["cos"] = losses.cosine(s_hidden, t_out.last_hidden_state, tokens)
        if "kl" in self.active:
            with torch.no_grad():
                t_logits = self.teacher.discriminator_predictions(t_out.last_hidden_state)
            terms["kl"] = losses.binary_kd_kl(s_logits, t_logits, tokens, self.cfg.temperature)
        return terms
