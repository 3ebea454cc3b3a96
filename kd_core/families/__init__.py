"""Model families: everything kd_core needs to know about one architecture, in one file per family
(TextBrewer's adaptors are the anchor). Adding a family is a new module here that calls `register`.

A `Family` says where the encoder layers and their query/key projections are, how hidden states
become the features of the vocabulary projection, the encoder's width, depth, head count and longest input, and how its
parameter names number the layers (for layer maps and layer-wise learning-rate decay), and which linear
maps of a layer hold its attention heads and FFN neurons (for structured pruning, kd_core.compress).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import UserError

# `<prefix>.layer.<i>.<rest>`: how BERT-style (and DistilBERT's transformer.layer) parameters name layer i
LAYER_NAME = re.compile(r"^(.*\.(?:layer|layers))\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class Units:
    """One encoder layer's prunable units. Head h is rows h*d..(h+1)*d of each of `qkv` and the same columns
    of `attn_out` (d = width / heads of the config); FFN neuron j is row j of `ffn_in` and column j of `ffn_out`."""
    attention: nn.Module  # the module whose `heads_attr` (and `all_head_size`, where it has one) count its heads
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    attn_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear


@dataclass(frozen=True)
class Family:
    model_types: tuple[str, ...]
    encoder_layers: Callable[[nn.Module], nn.ModuleList]  # of a model (any head) or its base model
    query_key: Callable[[nn.Module], tuple[nn.Module, nn.Module]]  # one layer's query and key projections
    # *ForMaskedLM -> (hidden -> features the vocabulary projection, model.get_output_embeddings(), reads)
    mlm_transform: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]
    width: Callable[[object], int]  # hidden size, from a config
    depth: Callable[[object], int]  # number of encoder layers
    heads: Callable[[object], int]  # attention heads per layer
    max_length: Callable[[object], int]  # longest input in tokens
    units: Callable[[nn.Module], Units]  # one encoder layer -> its heads' and FFN neurons' linear maps
    heads_attr: str  # the attention module's (and the config's) head-count attribute
    ffn_key: str  # the config's FFN width (intermediate size) key
    layer_name: re.Pattern = LAYER_NAME


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    for kind in family.model_types:
        FAMILIES[kind] = family
    return family


def family_of(model_or_config) -> Family:
    config = getattr(model_or_config, "config", model_or_config)
    kind = config.model_type
    if kind not in FAMILIES:
        raise UserError(f"model type '{kind}' is not a family kd_core knows ({', '.join(sorted(FAMILIES))}); "
                        "add a module for it in kd_core/families/")
    return FAMILIES[kind]


def layer_index(parameter_name: str) -> int | None:
    """The encoder layer a parameter belongs to (None for embeddings and heads), for any family."""
    m = LAYER_NAME.match(parameter_name)
    return int(m.group(2)) if m else None


from . import bert, distilbert, electra, roberta  # noqa: E402,F401  each registers its family
