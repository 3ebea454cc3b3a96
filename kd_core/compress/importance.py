"""Importance of attention heads and FFN neurons: IS(unit) = E_x |dL(x)/dm_unit| (Michel et al., 2019).

The head-mask formulation: a mask m multiplies each head's context vector (each FFN neuron's activation) on
its way into the attention output projection (the FFN output projection), and the importance is the
per-example gradient of the loss at m = 1. It equals the lecture's |sum over the unit's parameters of
dL/dtheta * theta| taken over that projection's weights, since those weights meet the unit only through m:
dL/dm_h = sum_{i, j in h} dL/dW_o[i, j] * W_o[i, j] (the first-order change of L when the head is removed).
The mask has one row per example, so a single backward pass gives every example's own gradient, and the
absolute value is taken per example before averaging, as E_x |.| asks; the weights need no gradient at all.

Losses (per example, mean over its positions):
- task: the model's own loss on gold labels (classification cross-entropy, STS-B squared error, MLM
  cross-entropy at the masked positions);
- kl: self-supervised (Yang et al., 2022), KL(stopgrad(q(x)) || p(x)) between the unpruned model q and the
  model p being pruned. Its exact gradient is identically zero while p = q (at the first pruning step:
  d/dtheta KL = -sum_c q_c d log p_c = -d/dtheta sum_c p_c = 0), so the loss used is its one-sample
  estimate -log p(y|x), y drawn from q(x) (per position for token-level heads): its expectation over y is
  KL(q || p) + H(q), so its gradient is an unbiased estimate of the KL's, and its magnitude per example
  measures how much the unit moves the output distribution (an empirical Fisher), labels not needed.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Literal

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from ..heads import IGNORE_INDEX, encoder_inputs
from .structure import ffn_counts, head_counts, head_size, layer_units

Kind = Literal["classes", "score", "tokens", "binary"]


def output_kind(model: nn.Module) -> Kind:
    """What the model's logits are: class scores per sequence, one regression score, vocabulary logits per
    token (MLM), or one replaced-token logit per token (ELECTRA discriminator)."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "score" if model.config.num_labels == 1 else "classes"
    if name.endswith("ForMaskedLM"):
        return "tokens"
    if name == "ElectraForPreTraining":
        return "binary"
    raise UserError(f"cannot prune a {name}: give a *ForSequenceClassification, *ForMaskedLM or an ELECTRA "
                    "discriminator (ElectraForPreTraining)")


def _per_example(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over each row's valid positions (0 for a row with none)."""
    valid = valid.to(values.dtype)
    return (values * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def example_losses(kind: Kind, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(batch,) negative log-likelihood of `targets` (IGNORE_INDEX, or < 0 for binary: position not counted)."""
    logits = logits.float()
    if kind == "classes":
        return F.cross_entropy(logits, targets, reduction="none")
    if kind == "score":
        return (logits.squeeze(-1) - targets) ** 2
    if kind == "tokens":
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
        return _per_example(nll, targets != IGNORE_INDEX)
    valid = targets >= 0
    return _per_example(F.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none"), valid)


def sample_targets(kind: Kind, logits: torch.Tensor, attention_mask: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """One draw of the outputs from the distribution `logits` define, at real tokens (pads not counted)."""
    logits = logits.float()
    if kind == "binary":
        return torch.bernoulli(torch.sigmoid(logits), generator=generator).masked_fill(~attention_mask.bool(), -1)
    flat = torch.multinomial(torch.softmax(logits.reshape(-1, logits.shape[-1]), -1), 1, generator=generator)
    drawn = flat.view(logits.shape[:-1])
    return drawn if kind == "classes" else drawn.masked_fill(~attention_mask.bool(), IGNORE_INDEX)


def check_mode(kind: Kind, mode: str, batch: dict[str, torch.Tensor]) -> None:
    """Before any work: can this head be scored with this loss?"""
    if mode == "kl" and kind == "score":
        raise UserError("--importance kl needs a distribution over outputs; a regression head (num_labels=1) has "
                        "none: use --importance task")
    if mode == "task" and (kind == "binary" or "labels" not in batch):
        raise UserError("--importance task needs gold labels: a GLUE task (--task) for a classifier, or a corpus "
                        "(--corpus) for an MLM model; an ELECTRA discriminator has none here: use --importance kl")


@contextmanager
def unit_masks(model: nn.Module, heads: list[torch.Tensor], neurons: list[torch.Tensor]):
    """Multiply, inside the model, head h of layer i by heads[i][:, h] and FFN neuron j by neurons[i][:, j]
    (rows: one per example, or a single row for all). Forward pre-hooks on the output projections."""
    size = head_size(model.config)

    def scale_heads(mask):
        return lambda module, args: ((args[0].unflatten(-1, (-1, size)) * mask[:, None, :, None]).flatten(-2),)

    def scale_neurons(mask):
        return lambda module, args: (args[0] * mask[:, None, :],)

    handles = []
    for units, h, n in zip(layer_units(model), heads, neurons):
        handles.append(units.attn_out.register_forward_pre_hook(scale_heads(h)))
        handles.append(units.ffn_out.register_forward_pre_hook(scale_neurons(n)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def per_unit(model: nn.Module, fill: float, rows: int | None = None, grad: bool = False
             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A tensor per layer for its heads and one for its FFN neurons, filled with `fill`; `rows`: one row per
    example (masks), None: a vector (sums)."""
    device = next(model.parameters()).device
    make = lambda n: torch.full((n,) if rows is None else (rows, n), fill, device=device, requires_grad=grad)
    return [make(n) for n in head_counts(model)], [make(n) for n in ffn_counts(model)]


def importance(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], mode: Literal["task", "kl"],
               reference: nn.Module | None = None, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head scores per layer, neuron scores per layer): E_x |dL(x)/dm| over the examples of `batches`.
    mode kl draws targets from `reference` (the unpruned model), with dropout off in both models."""
    if mode == "kl" and reference is None:
        raise ValueError("kl importance needs the unpruned reference model")
    kind = output_kind(model)
    batches = list(batches)
    if batches:
        check_mode(kind, mode, batches[0])
    model.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # only the masks need gradients
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    head_sums, neuron_sums = per_unit(model, 0.0)
    examples = 0
    try:
        for batch in tqdm(batches, desc=f"importance ({mode})", leave=False):
            rows = len(batch["input_ids"])
            if mode == "kl":
                with torch.no_grad():
                    q = reference(**encoder_inputs(batch, reference)).logits
                targets = sample_targets(kind, q.cpu(), batch["attention_mask"].cpu(), generator).to(q.device)
            else:
                targets = batch["labels"]
            heads, neurons = per_unit(model, 1.0, rows, grad=True)
            with unit_masks(model, heads, neurons):
                logits = model(**encoder_inputs(batch, model)).logits
            example_losses(kind, logits, targets).sum().backward()
            for total, mask in zip(head_sums + neuron_sums, heads + neurons):
                total += mask.grad.abs().sum(0)
            examples += rows
    finally:
        for p in trainable:
            p.requires_grad_(True)
    if examples == 0:
        raise UserError("no batches to score importance on: give more data or a larger --batches")
    return [s / examples for s in head_sums], [s / examples for s in neuron_sums]
