"""AdamW with no weight decay on biases and LayerNorm, and warmup schedules from transformers."""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import get_scheduler

from .families import layer_index
from .errors import UserError


def layer_depth(name: str, n_layers: int) -> int:
    """0 for embeddings, i+1 for encoder layer i, n_layers+1 for everything above (heads, pooler)."""
    layer = layer_index(name)
    if layer is not None:
        return layer + 1
    return 0 if "embeddings" in name else n_layers + 1


def param_groups(model: nn.Module, weight_decay: float, lr: float = 1.0, layer_decay: float = 1.0,
                 n_layers: int = 0) -> list[dict]:
    """Decayed weights vs biases + normalisation parameters (no decay); with layer_decay < 1, each
    group also by depth, lr * layer_decay ** (n_layers + 1 - depth) (ELECTRA fine-tuning uses 0.8)."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)) or "RMSNorm" in type(module).__name__:
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[bool, int], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = id(p) in no_decay or name.endswith("bias")
        depth = layer_depth(name, n_layers) if layer_decay != 1.0 else 0
        groups.setdefault((plain, depth), []).append(p)
    out = []
    for (plain, depth), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        scale = layer_decay ** (n_layers + 1 - depth) if layer_decay != 1.0 else 1.0
        out.append({"params": params, "weight_decay": 0.0 if plain else weight_decay, "lr": lr * scale})
    return out


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, fused: bool, layer_decay: float = 1.0, n_layers: int = 0) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, lr, layer_decay, n_layers)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def warmup_steps(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """Warmup is given as steps or as a ratio of the run, never both."""
    if warmup_steps and warmup_ratio:
        raise UserError("give train.warmup_steps or train.warmup_ratio, not both")
    return warmup_steps or math.ceil(warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, n_warmup: int):
    """name: linear | cosine | constant (all with linear warmup from 0)."""
    hf_name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[name]
    return get_scheduler(hf_name, optimizer, num_warmup_steps=n_warmup, num_training_steps=total_steps)
