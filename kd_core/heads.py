"""MLM heads applied only where they are needed.

HF `*ForMaskedLM.forward` projects every position onto the vocabulary (batch x seq x 30k floats);
the losses need the logits at masked positions only. `mlm_logits_at` takes the encoder's hidden states,
gathers the selected positions, and applies the model's own head to those rows.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch
from torch import nn
from .families import family_of

IGNORE_INDEX = -100


def mlm_transform(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden states (..., hidden) -> the features the vocabulary projection reads (the MLM head less its decoder)."""
    return family_of(model).mlm_transform(model)


def mlm_decoder(model: nn.Module) -> nn.Linear:
    """The vocabulary projection (weight: vocab x width, tied to the word embeddings where the model ties them)."""
    return model.get_output_embeddings()


def mlm_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden states (..., hidden) -> vocabulary logits, using the model's own MLM head (its family's)."""
    transform, decoder = mlm_transform(model), mlm_decoder(model)
    return lambda hidden: decoder(transform(hidden))


@functools.lru_cache(maxsize=None)
def _accepts_token_types(model_class: type) -> bool:
    return "token_type_ids" in inspect.signature(model_class.forward).parameters


def encoder_inputs(batch: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's inputs from a batch (token types dropped for models without them, e.g. DistilBERT)."""
    keys = ["input_ids", "attention_mask"]
    if "token_type_ids" in batch and _accepts_token_types(type(model)):
        keys.append("token_type_ids")
    return {k: batch[k] for k in keys if k in batch}


def mlm_logits_at(model: nn.Module, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits (n_selected, vocab) at the True entries of boolean `positions` (batch, seq)."""
    return mlm_head(model)(hidden[positions])


def masked_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the model's MLM predictions at the positions where labels != -100."""
    hidden = model.base_model(**encoder_inputs(batch, model.base_model)).last_hidden_state
    masked = batch["labels"] != IGNORE_INDEX
    logits = mlm_logits_at(model, hidden, masked)
    return nn.functional.cross_entropy(logits.float(), batch["labels"][masked])
