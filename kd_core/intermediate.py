"""Intermediate-layer distillation terms (TinyBERT's L_emb, L_hid, L_att), shared by every objective.

- emb: MSE between embedding-layer outputs (hidden_states[0]), student projected by W_e;
- hid: MSE between mapped layers' outputs, student projected by W_h, averaged over mapped layers;
- att: MSE between mapped layers' attention PROBABILITIES (post-softmax, before attention dropout),
       padding excluded, averaged over mapped layers.
Projections exist only when the widths differ; they are trained with the student and checkpointed
as part of the objective's extras.

Attention maps come from `AttentionProbe`: forward hooks keep the query/key projections of the mapped
layers only, and the probabilities are recomputed from them, so both models keep SDPA/flash attention
(HF returns maps only from eager attention, and only for every layer at once).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import losses
from .families import family_of
from .layer_map import LayerMap
from .errors import UserError

TERMS = ("emb", "hid", "att")


class AttentionProbe:
    """Attention probabilities of chosen layers, recomputed from their query/key projections.

    softmax(q k^T / sqrt(d_head) + key padding mask), as HF's eager attention computes them (absolute
    position embeddings only). A plain object, not a module: it holds hooks, not parameters."""

    def __init__(self, model: nn.Module, layers: list[int]):
        config = model.config
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise UserError(f"L_att supports absolute position embeddings, not '{config.position_embedding_type}'")
        family = family_of(model)
        self.heads = family.heads(config)
        self.captured: dict[tuple[int, str], torch.Tensor] = {}
        self.handles = []
        modules = family.encoder_layers(model)
        for i in sorted(set(layers)):
            for kind, module in zip(("q", "k"), family.query_key(modules[i])):
                self.handles.append(module.register_forward_hook(self._keep(i, kind)))

    def _keep(self, layer: int, kind: str):
        def hook(module, inputs, output):
            self.captured[(layer, kind)] = output
        return hook

    def probs(self, layer: int, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, heads, query, key) probabilities of `layer` in the last forward pass."""
        q, k = self.captured[(layer, "q")], self.captured[(layer, "k")]
        b, n, width = q.shape
        d = width // self.heads
        q = q.view(b, n, self.heads, d).transpose(1, 2).float()
        k = k.view(b, n, self.heads, d).transpose(1, 2).float()
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        pad = ~attention_mask.bool()[:, None, None, :]
        return torch.softmax(scores.masked_fill(pad, torch.finfo(scores.dtype).min), dim=-1)


class IntermediateLosses(nn.Module):
    def __init__(self, active: set[str], student_width: int, teacher_width: int, layer_map: LayerMap):
        super().__init__()
        self.active = set(active) & set(TERMS)
        self.layer_map = layer_map
        self.probes: tuple[AttentionProbe, AttentionProbe] | None = None
        differ = student_width != teacher_width
        self.proj_hidden = nn.Linear(student_width, teacher_width) if "hid" in self.active and differ else None
        self.proj_emb = nn.Linear(student_width, teacher_width) if "emb" in self.active and differ else None

    @property
    def needs_hidden_states(self) -> bool:
        return bool(self.active & {"hid", "emb"})

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        """Hook the mapped layers' query/key projections when L_att is on (call once, before training)."""
        if "att" in self.active:
            pairs = self.layer_map.attention_pairs()
            self.probes = (AttentionProbe(student, [s for s, _ in pairs]), AttentionProbe(teacher, [t for _, t in pairs]))

    def detach_probes(self) -> None:
        """Remove the hooks (when the models outlive this objective, e.g. between distillation stages)."""
        for probe in self.probes or ():
            for handle in probe.handles:
                handle.remove()
        self.probes = None

    def forward(self, s_out, t_out, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """s_out/t_out: HF model outputs (with hidden_states when emb/hid are on), right after both forwards."""
        tokens = attention_mask.bool()
        terms = {}
        if "emb" in self.active:
            terms["emb"] = losses.hidden_mse(s_out.hidden_states[0], t_out.hidden_states[0], tokens, self.proj_emb)
        if "hid" in self.active:
            terms["hid"] = torch.stack([
                losses.hidden_mse(s_out.hidden_states[s], t_out.hidden_states[t], tokens, self.proj_hidden)
                for s, t in self.layer_map.hidden_pairs()]).mean()
        if "att" in self.active:
            s_probe, t_probe = self.probes
            terms["att"] = torch.stack([
                losses.attention_mse(s_probe.probs(s, attention_mask), t_probe.probs(t, attention_mask), attention_mask)
                for s, t in self.layer_map.attention_pairs()]).mean()
        return terms
