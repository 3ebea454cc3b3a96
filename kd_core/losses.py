"""Distillation loss terms: pure functions, computed in fp32, padding excluded, UNWEIGHTED.

One signature for the registry (TextBrewer style): `loss(student, teacher, mask, **options) -> scalar`.
`mask` is a bool tensor selecting the positions that count (non-pad tokens, or masked tokens);
it broadcasts over the leading dimensions of student/teacher. The loss weights live in the config
and are applied by the engine; the temperature factor T^2 is applied here, in `kd_kl` (and in its fused
form `vocab_kd_kl`), and nowhere else.
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


DEFAULT_CHUNK_ROWS = 256  # rows of [rows x vocab] logits per chunk: ~31 MB fp32 at vocab 30,522


def _matmul_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the vocabulary matmuls run in: autocast's when it is on (as nn.Linear would), else the inputs'."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else dtype


class _ChunkedVocabKL(torch.autograd.Function):
    """sum over rows of KL(softmax(t/T) || softmax(s/T)) with s = h_s W_s^T + b_s and t = h_t W_t^T + b_t,
    one chunk of rows at a time, so no [rows x vocab] tensor outlives its chunk.

    The student's gradient is computed in forward, chunk by chunk (the backward only scales it): recomputing
    both logits in backward would cost two more [rows x width x vocab] matmuls. The teacher gets no gradient."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, temperature, chunk_rows, with_grad):
        cd = _matmul_dtype(s_hidden.device.type, s_hidden.dtype)
        with torch.autocast(s_hidden.device.type, enabled=False):
            # 1/T folded into the inputs of the matmuls: the logits come out already divided by T
            hs, ws, bs = (s_hidden / temperature).to(cd), s_weight.to(cd), (s_bias / temperature).to(cd)
            ht, wt, bt = (t_hidden / temperature).to(cd), t_weight.to(cd), (t_bias / temperature).to(cd)
            total = torch.zeros((), dtype=torch.float32, device=s_hidden.device)
            if with_grad:
                grad_h = torch.empty(hs.shape, dtype=torch.float32, device=hs.device)
                grad_w = torch.zeros(s_weight.shape, dtype=torch.float32, device=hs.device)
                grad_b = torch.zeros(s_bias.shape, dtype=torch.float32, device=hs.device)
            for i in range(0, len(hs), chunk_rows):
                rows = slice(i, i + chunk_rows)
                log_q = F.linear(hs[rows], ws, bs).float().log_softmax(-1)
                log_p = F.linear(ht[rows], wt, bt).float().log_softmax(-1)
                p = log_p.exp()
                total += (torch.linalg.vecdot(p, log_p) - torch.linalg.vecdot(p, log_q)).sum()
                if with_grad:
                    g = log_q.exp_().sub_(p)  # d KL / d (s/T) = softmax(s/T) - softmax(t/T)
                    grad_b += g.sum(0)
                    g = g.to(cd)
                    grad_h[rows] = g @ ws
                    grad_w += (g.T @ hs[rows]).float()
        if with_grad:
            # chain rule through s/T: the 1/T of grad_w came in with hs = h/T; grad_h and grad_b take it here
            ctx.save_for_backward(grad_h / temperature, grad_w, grad_b / temperature)
            ctx.dtypes = (s_hidden.dtype, s_weight.dtype, s_bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grads = [(g * grad_out).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None, None, None)


def vocab_kd_kl(student_hidden: torch.Tensor, student_weight: torch.Tensor, student_bias: torch.Tensor,
                teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, teacher_bias: torch.Tensor,
                mask: torch.Tensor | None = None, temperature: float = 1.0,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """kd_kl of the vocabulary logits `hidden @ weight.T + bias` of student and teacher, fused: the logits
    are computed, compared and differentiated `chunk_rows` rows at a time, never all at once.

    Same value and gradient as kd_kl(F.linear(student_hidden, ...), F.linear(teacher_hidden, ...), mask, T)
    (T^2 applied here; the teacher side is treated as constant). hidden: (..., width) at the positions
    where `mask` (...) is True, or all of them; matmuls in autocast's dtype when it is on, losses in fp32."""
    if mask is not None:
        student_hidden, teacher_hidden = student_hidden[mask], teacher_hidden[mask]
    student_hidden, teacher_hidden = student_hidden.flatten(0, -2), teacher_hidden.flatten(0, -2)
    with_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (student_hidden, student_weight, student_bias))
    total = _ChunkedVocabKL.apply(student_hidden, student_weight, student_bias, teacher_hidden.detach(),
                                  teacher_weight.detach(), teacher_bias.detach(), temperature, chunk_rows, with_grad)
    return total / len(student_hidden) * temperature ** 2


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
