"""Distillation loss terms: pure functions, computed in fp32, padding excluded, UNWEIGHTED.

One signature for the registry (TextBrewer style): `loss(student, teacher, mask, **options) -> scalar`.
`mask` is a bool tensor selecting the positions that count (non-pad tokens, or masked tokens);
it broadcasts over the leading dimensions of student/teacher. The loss weights live in the config
and are applied by the engine; the temperature factor T^2 is applied here, in `kd_kl`, and nowhere else.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

LossFn = Callable[..., torch.Tensor]


def _masked_mean(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-position values at True entries of mask (all when None).

    A masked sum, not boolean indexing: no device-to-host sync, no gathered copy of the inputs."""
    if mask is None:
        return per_position.mean()
    weight = mask.to(per_position.dtype).expand_as(per_position)
    return (per_position * weight).sum() / weight.sum()


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
          temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over selected positions of KL(softmax(teacher/T) || softmax(student/T)).

    The T^2 keeps gradient magnitudes comparable across temperatures (Hinton et al.); it is applied
    here once. Logits may already be gathered at the positions (mask=None)."""
    s = student.float() / temperature
    t_log = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (t_log.exp() * (t_log - F.log_softmax(s, dim=-1))).sum(-1)
    return _masked_mean(kl, mask) * temperature ** 2


def logits_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between logits (Bucila et al.; TinyBERT's fine-tuning-stage L_pred)."""
    return _masked_mean(((student.float() - teacher.float()) ** 2).mean(-1), mask)


def cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over selected tokens of 1 - cos(student, teacher) (DistilBERT's cosine embedding loss)."""
    return _masked_mean(1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1), mask)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
               projection: torch.nn.Module | None = None) -> torch.Tensor:
    """MSE between (projected) student states and teacher states over selected tokens (TinyBERT L_hid, L_emb).

    `projection` maps the student width onto the teacher's when they differ (a learned nn.Linear)."""
    s = projection(student) if projection is not None else student
    return _masked_mean(((s.float() - teacher.float()) ** 2).mean(-1), mask)


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE between attention PROBABILITY maps (post-softmax, as HF returns them), mean over heads.

    student/teacher: (batch, heads, query, key). Only real query rows and real key columns count:
    padded queries carry meaningless rows, padded keys are ~0 in both. Heads must match in number."""
    if student.shape != teacher.shape:
        raise ValueError(f"attention maps differ in shape: student {tuple(student.shape)} vs teacher "
                         f"{tuple(teacher.shape)}; L_att needs the same number of heads and sequence length")
    valid = attention_mask.bool()
    pair = (valid[:, :, None] & valid[:, None, :])[:, None].float()  # (batch, 1, q, k)
    # a masked sum, not boolean indexing: no device-to-host sync, no gathered copy of the maps
    return ((student.float() - teacher.float()) ** 2 * pair).sum() / (pair.sum() * student.shape[1])


def binary_kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
    """kd_kl for one logit per token (ELECTRA's original/replaced head): the two-class distribution
    [1 - sigmoid(z/T), sigmoid(z/T)], KL(teacher || student) * T^2, mean over selected tokens."""
    two = lambda z: torch.stack([torch.zeros_like(z), z.float()], dim=-1)  # softmax([0, z]) = [1 - sig(z), sig(z)]
    return kd_kl(two(student_logits), two(teacher_logits), mask, temperature)


LOSSES: dict[str, LossFn] = {
    "kd_kl": kd_kl,
    "logits_mse": logits_mse,
    "cosine": cosine,
    "hidden_mse": hidden_mse,
    "attention_mse": attention_mse,
    "binary_kd_kl": binary_kd_kl,
}
