"""The contract between the training engine and what it trains.

An objective owns the student and any trainable extras (projections, heads), optionally a frozen
teacher, and the resolved weight of every loss term (`weights`: the objective skips a term whose
weight is 0; the engine reads them from here). `forward(batch)` returns a dict of named,
UNWEIGHTED scalar loss terms; the weights are applied in exactly one place, `weighted_total`.
"""
from __future__ import annotations

import torch
from torch import nn
from .errors import UserError


class Objective(nn.Module):
    STUDENT_ONLY_TERMS: frozenset[str] = frozenset()  # terms that never read the teacher

    def __init__(self, student: nn.Module, teacher: nn.Module | None, weights: dict[str, float]):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.weights = dict(weights)
        self.active = {k for k, w in self.weights.items() if w != 0}
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    @property
    def uses_teacher(self) -> bool:
        """Whether a term that reads the teacher is active (else its forward is skipped: the teacherless control)."""
        return self.teacher is not None and bool(self.active - self.STUDENT_ONLY_TERMS)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # dropout off in the teacher, always
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extras_state_dict(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Trainable state that is neither the student nor the teacher (saved beside the student), from `state`
        (default: this module's state dict)."""
        state = self.state_dict() if state is None else state
        return {k: v for k, v in state.items() if not k.startswith(("student.", "teacher."))}


def freeze_head(model: nn.Module) -> None:
    """Freeze the parameters outside the encoder (MLM/classification head) that no active term trains.

    Without this, DDP fails on parameters that never receive a gradient. Weights tied to the encoder
    (an MLM decoder tied to the word embeddings) stay trainable: they belong to the encoder too."""
    encoder = {id(p) for p in model.base_model.parameters()}
    for p in model.parameters():
        if id(p) not in encoder:
            p.requires_grad_(False)


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum_k weights[k] * terms[k], and each weighted term. Every term needs a weight and vice versa,
    except that a weight of 0 needs no term (objectives skip computing switched-off terms)."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise UserError(f"loss term(s) {missing} have no weight in the config; weights given: {sorted(weights)}")
    absent = sorted(k for k, w in weights.items() if w != 0 and k not in terms)
    if absent:
        raise UserError(f"weights given for loss term(s) {absent} that the objective did not compute; "
                       f"it computed {sorted(terms)}")
    weighted = {k: weights[k] * v.float() for k, v in terms.items()}
    total = torch.stack(list(weighted.values())).sum()
    return total, weighted
