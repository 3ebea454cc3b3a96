"""Removing attention heads and FFN neurons for real (smaller weight matrices, not masks), and saving and
loading the result.

transformers 5 has no `prune_heads`, and BERT-style attention derives its head size from the config as
hidden_size / num_attention_heads, so a config cannot describe a layer with fewer heads. A pruned model
therefore keeps the config's original head count (which keeps the head size right) and records what it
holds in two extra config.json attributes:

- `kept_heads`: per layer, the ORIGINAL indices of the heads kept;
- `ffn_sizes`: per layer, the number of FFN neurons kept. When every layer keeps the same number, the
  family's FFN key (`intermediate_size`, DistilBERT's `hidden_dim`) is set to it as well.

What plain `from_pretrained` can load: a model with no head removed and the same FFN size in every layer
(its config then states every shape). It refuses, with a size-mismatch error, any model with heads removed
or FFN sizes that differ between layers: use `load_pruned`, which rebuilds those shapes and loads every
weight strictly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import UserError
from ..families import Units, family_of


def head_size(config) -> int:
    family = family_of(config)
    return family.width(config) // family.heads(config)


def layer_units(model: nn.Module) -> list[Units]:
    family = family_of(model)
    return [family.units(layer) for layer in family.encoder_layers(model)]


def head_counts(model: nn.Module) -> list[int]:
    return [u.attn_out.in_features // head_size(model.config) for u in layer_units(model)]


def ffn_counts(model: nn.Module) -> list[int]:
    return [u.ffn_in.out_features for u in layer_units(model)]


@torch.no_grad()
def keep_outputs(linear: nn.Linear, index: torch.Tensor) -> None:
    """Keep the output features (weight rows, bias entries) at `index`, in place."""
    linear.weight = nn.Parameter(linear.weight[index].clone(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias[index].clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features = len(index)


@torch.no_grad()
def keep_inputs(linear: nn.Linear, index: torch.Tensor) -> None:
    """Keep the input features (weight columns) at `index`, in place; the bias is the output's, untouched."""
    linear.weight = nn.Parameter(linear.weight[:, index].clone(), requires_grad=linear.weight.requires_grad)
    linear.in_features = len(index)


def head_features(heads: torch.Tensor, size: int) -> torch.Tensor:
    """The feature indices of the heads `heads` (each `size` consecutive features)."""
    return (heads[:, None] * size + torch.arange(size)).flatten()


def keep_heads(units: Units, heads: torch.Tensor, size: int, heads_attr: str) -> None:
    features = head_features(heads, size)
    for linear in units.qkv:
        keep_outputs(linear, features)
    keep_inputs(units.attn_out, features)
    setattr(units.attention, heads_attr, len(heads))
    if hasattr(units.attention, "all_head_size"):  # BERT-style attention keeps the width it projects to
        units.attention.all_head_size = len(features)


def keep_neurons(units: Units, neurons: torch.Tensor) -> None:
    keep_outputs(units.ffn_in, neurons)
    keep_inputs(units.ffn_out, neurons)


def prune_model(model: nn.Module, heads: list[torch.Tensor], neurons: list[torch.Tensor]) -> None:
    """Keep, in every layer i, the heads `heads[i]` and the FFN neurons `neurons[i]` (indices into the layer's
    current units); the model's config records the result (`kept_heads` in original indices, `ffn_sizes`)."""
    family, size = family_of(model), head_size(model.config)
    original = kept_heads_of(model)
    for units, h, n in zip(layer_units(model), heads, neurons):
        keep_heads(units, h, size, family.heads_attr)
        keep_neurons(units, n)
    record_shapes(model, [[row[i] for i in h.tolist()] for row, h in zip(original, heads)])


def kept_heads_of(model: nn.Module) -> list[list[int]]:
    """Per layer, the original indices of the heads the model holds (all of them if never pruned)."""
    config = model.config
    saved = getattr(config, "kept_heads", None)
    return [list(row) for row in saved] if saved else [list(range(n)) for n in head_counts(model)]


def record_shapes(model: nn.Module, kept_heads: list[list[int]]) -> None:
    config, family = model.config, family_of(model)
    config.kept_heads = kept_heads
    config.ffn_sizes = ffn_counts(model)
    if len(set(config.ffn_sizes)) == 1:  # one FFN size for all layers: the stock config states it
        setattr(config, family.ffn_key, config.ffn_sizes[0])


def is_stock_loadable(config) -> bool:
    """Can plain `from_pretrained` load a model saved with this config?"""
    heads = family_of(config).heads(config)
    kept = getattr(config, "kept_heads", None) or []
    return all(len(row) == heads for row in kept) and len(set(getattr(config, "ffn_sizes", None) or [0])) == 1


def shape_like_config(model: nn.Module) -> None:
    """Give a freshly built model the shapes its config records (`kept_heads`, `ffn_sizes`); the weights it
    keeps are placeholders for a state dict to fill."""
    config = model.config
    kept = getattr(config, "kept_heads", None) or [list(range(n)) for n in head_counts(model)]
    sizes = getattr(config, "ffn_sizes", None) or ffn_counts(model)
    family, size = family_of(model), head_size(config)
    for units, row, n in zip(layer_units(model), kept, sizes):
        keep_heads(units, torch.arange(len(row)), size, family.heads_attr)
        keep_neurons(units, torch.arange(n))


def from_config(model_class, config) -> nn.Module:
    """An Auto* class builds from a config with `from_config`; a concrete model class is called with it."""
    return getattr(model_class, "from_config", model_class)(config)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"{path} holds no *.safetensors weights: give a directory saved with save_pretrained")
    return {k: v for f in files for k, v in load_file(f).items()}


def load_weights_strictly(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Every parameter and buffer must come from `state`, except the second name of a tied weight (an MLM
    decoder tied to the word embeddings), which save_pretrained does not write."""
    aliases = ({n for n, _ in model.named_parameters(remove_duplicate=False)}
               - {n for n, _ in model.named_parameters()})
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a size mismatch: the config does not describe these weights
        raise UserError(f"{where}: the weights do not fit the shapes its config.json records ({str(e)[:300]})") from e
    missing = sorted(set(missing) - aliases)
    if missing or unexpected:
        raise UserError(f"{where}: weights missing {missing[:3]} or unexpected {sorted(unexpected)[:3]} for a "
                        f"{type(model).__name__}; give the directory `python -m kd_core.compress prune` wrote")


def load_pruned(path: str | Path, model_class) -> nn.Module:
    """A model saved by `save_pruned` (or any save_pretrained directory), in fp32, eval mode: built from its
    config, given the shapes `kept_heads`/`ffn_sizes` record, and every weight loaded strictly. `model_class`
    is an Auto* class (AutoModelForSequenceClassification) or a concrete one (ElectraForPreTraining)."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json: give a directory saved with save_pretrained")
    config = AutoConfig.from_pretrained(path)
    model = from_config(model_class, config).float()
    shape_like_config(model)
    load_weights_strictly(model, read_weights(path), str(path))
    return model.eval()


def save_pruned(model: nn.Module, tokenizer, directory: Path) -> None:
    """save_pretrained with the shapes recorded in config.json (see the module docstring for who loads it)."""
    record_shapes(model, kept_heads_of(model))
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
