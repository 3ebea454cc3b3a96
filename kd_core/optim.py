"""AdamW with no weight decay on biases and LayerNorm, and warmup schedules from transformers."""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import get_scheduler


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases + normalisation parameters (no decay)."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)) or "RMSNorm" in type(module).__name__:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if id(p) in no_decay or name.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)


def warmup_steps(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """Warmup is given as steps or as a ratio of the run, never both."""
    if warmup_steps and warmup_ratio:
        raise ValueError("give train.warmup_steps or train.warmup_ratio, not both")
    return warmup_steps or math.ceil(warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, n_warmup: int):
    """name: linear | cosine | constant (all with linear warmup from 0)."""
    hf_name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[name]
    return get_scheduler(hf_name, optimizer, num_warmup_steps=n_warmup, num_training_steps=total_steps)
