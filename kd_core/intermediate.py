"""Intermediate-layer distillation terms (TinyBERT's L_emb, L_hid, L_att), shared by every objective.

- emb: MSE between embedding-layer outputs (hidden_states[0]), student projected by W_e;
- hid: MSE between mapped layers' outputs, student projected by W_h, averaged over mapped layers;
- att: MSE between mapped layers' attention PROBABILITIES (post-softmax), padding excluded,
       averaged over mapped layers.
Projections exist only when the widths differ; they are trained with the student and checkpointed
as part of the objective's extras.
"""
from __future__ import annotations

import torch
from torch import nn

from . import losses
from .layer_map import LayerMap

TERMS = ("emb", "hid", "att")


class IntermediateLosses(nn.Module):
    def __init__(self, active: set[str], student_width: int, teacher_width: int, layer_map: LayerMap):
        super().__init__()
        self.active = set(active) & set(TERMS)
        self.layer_map = layer_map
        differ = student_width != teacher_width
        self.proj_hidden = nn.Linear(student_width, teacher_width) if "hid" in self.active and differ else None
        self.proj_emb = nn.Linear(student_width, teacher_width) if "emb" in self.active and differ else None

    @property
    def needs_hidden_states(self) -> bool:
        return bool(self.active & {"hid", "emb"})

    @property
    def needs_attentions(self) -> bool:
        return "att" in self.active

    def forward(self, s_out, t_out, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """s_out/t_out: HF model outputs with hidden_states / attentions as requested."""
        tokens = attention_mask.bool()
        terms = {}
        if "emb" in self.active:
            terms["emb"] = losses.hidden_mse(s_out.hidden_states[0], t_out.hidden_states[0], tokens, self.proj_emb)
        if "hid" in self.active:
            terms["hid"] = torch.stack([
                losses.hidden_mse(s_out.hidden_states[s], t_out.hidden_states[t], tokens, self.proj_hidden)
                for s, t in self.layer_map.hidden_pairs()]).mean()
        if "att" in self.active:
            terms["att"] = torch.stack([
                losses.attention_mse(s_out.attentions[s], t_out.attentions[t], attention_mask)
                for s, t in self.layer_map.attention_pairs()]).mean()
        return terms
