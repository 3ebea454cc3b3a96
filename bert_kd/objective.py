"""The DistilBERT objective and its variants (Greek report, TinyBERT), as one module.

Terms (each computed only when its weight is non-zero; weights live in the config):
- ce:         KL(softmax(t/T) || softmax(s/T)) * T^2 over the vocabulary, at all non-pad positions
              or only at masked ones (`restrict_ce_to_mask`)
- mlm:        the student's masked-LM cross-entropy
- cos:        1 - cos(student, teacher) of last hidden states, non-pad tokens
- mse_logits: MSE between vocabulary logits at the same positions as ce
- att:        MSE between attention probability maps (post-softmax, padding excluded) of mapped
              layers, averaged over the mapped layers
- hid:        MSE between mapped layers' hidden states (student projected to the teacher's width),
              averaged over the mapped layers
- emb:        MSE between embedding-layer outputs (projected likewise)
The MLM heads run only at the positions a term needs; L_ce, unless another term reads the same logits,
runs fused and chunked (losses.vocab_kd_kl), never holding the [positions x vocab] logits. The teacher
runs only when a term that reads it has a non-zero weight (`mlm` alone: the teacherless control).
Attention maps are requested (eager attention) only when `att` is on; otherwise both models keep SDPA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kd_core import losses
from kd_core.heads import IGNORE_INDEX, encoder_inputs, mlm_decoder, mlm_head, mlm_transform
from kd_core.intermediate import IntermediateLosses
from kd_core.layer_map import LayerMap, resolve_layer_map
from kd_core.objective import Objective, freeze_head
from kd_core.config import out_of_range
from kd_core.errors import UserError
from kd_core.families import family_of

TERMS = ("ce", "mlm", "cos", "mse_logits", "att", "hid", "emb")


@dataclass
class DistilLossConfig:
    temperature: float = 2.0
    restrict_ce_to_mask: bool = False
    loss_layers: list[int] | None = None  # teacher layer per student layer for att/hid; None: the init map

    def problems(self) -> list[str]:
        return out_of_range([(not self.temperature > 0, f"temperature={self.temperature}: give a value > 0")])




class DistillationObjective(Objective):
    STUDENT_ONLY_TERMS = frozenset({"mlm"})

    def __init__(self, student: nn.Module, teacher: nn.Module, layer_map: LayerMap, weights: dict[str, float],
                 cfg: DistilLossConfig):
        super().__init__(student, teacher, weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise UserError(f"unknown loss term(s) {unknown} in loss_weights; bert_kd terms: {list(TERMS)}")
        if len(student.get_input_embeddings().weight) != len(teacher.get_input_embeddings().weight):
            raise UserError(f"vocab mismatch: student has {len(student.get_input_embeddings().weight)} tokens, "
                             f"teacher {len(teacher.get_input_embeddings().weight)}; they must share a tokenizer")
        s_width, t_width = family_of(student).width(student.config), family_of(teacher).width(teacher.config)
        if "cos" in self.active and s_width != t_width:
            raise UserError(f"L_cos compares last hidden states, but the student is {s_width} wide and the teacher "
                             f"{t_width}; use hid (with a learned projection) for narrower students")
        self.cfg = cfg
        loss_map = layer_map if cfg.loss_layers is None else resolve_layer_map(
            cfg.loss_layers, layer_map.n_teacher, layer_map.n_student)
        self.intermediate = IntermediateLosses(self.active, s_width, t_width, loss_map)
        self.intermediate.attach(student, teacher)
        if not self.active & {"ce", "mse_logits", "mlm"}:
            freeze_head(student)  # TinyBERT-style runs train no vocabulary head

    def _encode(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        return model.base_model(**encoder_inputs(batch, model.base_model),
                                output_hidden_states=self.intermediate.needs_hidden_states)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t_out = None
        if self.uses_teacher:
            with torch.no_grad():
                t_out = self._encode(self.teacher, batch)
        s_out = self._encode(self.student, batch)
        tokens = batch["attention_mask"].bool()
        masked = batch["labels"] != IGNORE_INDEX
        terms: dict[str, torch.Tensor] = {}

        vocab_positions = masked if self.cfg.restrict_ce_to_mask else tokens
        s_logits = None
        if self.active & {"ce", "mse_logits"}:
            s_features = mlm_transform(self.student)(s_out.last_hidden_state[vocab_positions])
            with torch.no_grad():
                t_features = mlm_transform(self.teacher)(t_out.last_hidden_state[vocab_positions])
            s_dec, t_dec = mlm_decoder(self.student), mlm_decoder(self.teacher)
            # the logits themselves only when another term reads them; else L_ce never holds them whole
            if "mse_logits" in self.active or ("mlm" in self.active and self.cfg.restrict_ce_to_mask):
                s_logits = s_dec(s_features)
                with torch.no_grad():
                    t_logits = t_dec(t_features)
                if "ce" in self.active:
                    terms["ce"] = losses.kd_kl(s_logits, t_logits, None, self.cfg.temperature)
                if "mse_logits" in self.active:
                    terms["mse_logits"] = losses.logits_mse(s_logits, t_logits)
            else:
                terms["ce"] = losses.vocab_kd_kl(s_features, s_dec.weight, s_dec.bias, t_features, t_dec.weight,
                                                 t_dec.bias, None, self.cfg.temperature)
        if "mlm" in self.active:
            if s_logits is not None and self.cfg.restrict_ce_to_mask:
                mlm_logits = s_logits  # the same rows: reuse them
            else:
                mlm_logits = mlm_head(self.student)(s_out.last_hidden_state[masked])
            terms["mlm"] = nn.functional.cross_entropy(mlm_logits.float(), batch["labels"][masked])
        if "cos" in self.active:
            terms["cos"] = losses.cosine(s_out.last_hidden_state, t_out.last_hidden_state, tokens)
        if t_out is not None:
            terms.update(self.intermediate(s_out, t_out, batch["attention_mask"]))
        return terms
