"""Iterative structured pruning of attention heads and FFN neurons, with a short distillation from the unpruned
model after each step to recover.

Each of `steps` steps scores every remaining unit on `batches` batches (kd_core.compress.importance), removes
the least important ones so that the removed share reaches step/steps of the target, and (recover_steps > 0)
distils the unpruned model into the pruned one through the kd_core Engine: KL between their output
distributions (MSE for a regression head) plus MSE between their hidden states at every layer (same depth,
same width: no projection). Units are ranked over all layers together (Michel et al., 2019), every layer
keeping at least one head and one neuron; `per_layer` removes the same share in every layer instead, so
every layer keeps the same FFN size and, with no heads removed, plain from_pretrained loads the result.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..config import out_of_range
from ..data import MaskingCollator, MaskingConfig, open_corpus
from ..engine import Engine, TrainConfig
from ..errors import UserError
from ..families import family_of
from ..heads import encoder_inputs
from ..intermediate import IntermediateLosses
from ..layer_map import resolve_layer_map
from ..losses import binary_kd_kl, kd_kl, logits_mse
from ..objective import Objective
from .common import check_output, load_model, n_params, staged
from .importance import Kind, importance, output_kind
from .structure import ffn_counts, head_counts, head_size, is_stock_loadable, prune_model, save_pruned


@dataclass
class PruneConfig:
    model: str = ""
    output: str = ""
    target_heads: float = 0.0  # share of the heads to remove, in [0, 1)
    target_ffn: float = 0.0  # share of the FFN neurons to remove
    target_params: float = 0.0  # > 0: share of the parameters to remove instead, heads and neurons at one rate
    importance: Literal["task", "kl"] = "task"
    task: str = ""  # a GLUE task (the model is a classifier fine-tuned on it) ...
    glue_dir: str | None = None
    corpus: str = ""  # ... or a prepared corpus (an MLM model or an ELECTRA discriminator)
    batches: int = 8  # batches per importance estimate
    batch_size: int = 16
    max_len: int = 128  # GLUE inputs are cut to this many tokens
    steps: int = 1
    recover_steps: int = 0  # distillation steps after each pruning step (0: none)
    recover_lr: float = 5e-5
    per_layer: bool = False
    seed: int = 0
    overwrite: bool = False

    def problems(self) -> list[str]:
        shares = {"--target-heads": self.target_heads, "--target-ffn": self.target_ffn,
                  "--target-params": self.target_params}
        return out_of_range(
            [(not 0 <= v < 1, f"{k} {v}: give a share in [0, 1) of the units to remove") for k, v in shares.items()]
            + [(not any(shares.values()), "nothing to prune: give --target-heads, --target-ffn or --target-params"),
               (bool(self.target_params and (self.target_heads or self.target_ffn)),
                "--target-params sets both rates: give it alone, or --target-heads/--target-ffn"),
               (bool(self.task) == bool(self.corpus), "give the data to score units on: --task (with --glue-dir) "
                                                      "or --corpus, one of them"),
               (self.batches < 1, f"--batches {self.batches}: give 1 or more"),
               (self.batch_size < 1, f"--batch-size {self.batch_size}: give 1 or more"),
               (self.steps < 1, f"--steps {self.steps}: give 1 or more"),
               (self.recover_steps < 0, f"--recover-steps {self.recover_steps}: give 0 or more"),
               (not self.recover_lr > 0, f"--recover-lr {self.recover_lr}: give a learning rate > 0")])


# ---- which units go --------------------------------------------------------------------------------------
def removed_after(total: int, share: float, step: int, steps: int) -> int:
    """Units gone after `step` of `steps`: the target share reached in equal increments."""
    return round(round(total * share) * step / steps)


def least_important(scores: list[torch.Tensor], n_remove: int) -> list[torch.Tensor]:
    """Indices kept per layer once the `n_remove` lowest-scoring units of all layers are gone; a layer's
    last unit always stays (an empty attention or FFN would have no shape to reload)."""
    left = [len(row) for row in scores]
    gone: list[set[int]] = [set() for _ in scores]
    for _, layer, i in sorted((float(s), layer, i) for layer, row in enumerate(scores) for i, s in enumerate(row)):
        if n_remove == 0:
            break
        if left[layer] > 1:
            gone[layer].add(i)
            left[layer] -= 1
            n_remove -= 1
    return [torch.tensor([i for i in range(len(row)) if i not in g], dtype=torch.long) for row, g in zip(scores, gone)]


def kept_at_step(scores: list[torch.Tensor], original: list[int], share: float, step: int, steps: int,
                 per_layer: bool) -> list[torch.Tensor]:
    if per_layer:
        return [least_important([row], len(row) - n + removed_after(n, share, step, steps))[0]
                for row, n in zip(scores, original)]
    current = sum(len(row) for row in scores)
    return least_important(scores, current - sum(original) + removed_after(sum(original), share, step, steps))


def check_reachable(original: list[int], share: float, per_layer: bool, what: str) -> None:
    """Every layer keeps one unit: refuse a target that would need more."""
    groups = [[n] for n in original] if per_layer else [original]
    for group in groups:
        if round(sum(group) * share) > sum(group) - len(group):
            raise UserError(f"removing {share:g} of the {what} would leave a layer without any; every layer keeps "
                            f"at least one ({len(original)} layers, {sum(original)} {what}): give a smaller target")


def rate_for_params(model: nn.Module, share: float) -> float:
    """The one removal rate for heads and FFN neurons that removes `share` of the model's parameters."""
    width, size = family_of(model).width(model.config), head_size(model.config)
    per_head = 4 * width * size + 3 * size  # query/key/value rows with biases, attention-output columns
    per_neuron = 2 * width + 1  # FFN input row with bias, output column
    prunable = sum(head_counts(model)) * per_head + sum(ffn_counts(model)) * per_neuron
    rate = share * n_params(model) / prunable
    if rate >= 1:
        raise UserError(f"--target-params {share:g}: heads and FFN neurons hold {prunable / n_params(model):.0%} of "
                        "the parameters (embeddings and heads are not pruned); give a smaller share")
    return rate


# ---- data ------------------------------------------------------------------------------------------------
def open_data(cfg: PruneConfig, tokenizer, model: nn.Module):
    """(rows, collate) of the task's training set or the corpus's train split."""
    kind = output_kind(model)
    if cfg.task:
        from ..glue.finetune import FinetuneConfig, make_collate, task_rows
        from ..glue.tasks import get_task

        task = get_task(cfg.task)
        if kind not in ("classes", "score"):
            raise UserError(f"--task {task.name} needs a model fine-tuned on it (a *ForSequenceClassification), "
                            f"not a model with a '{kind}' head; give a corpus with --corpus instead")
        if model.config.num_labels != task.num_labels:
            raise UserError(f"the model has {model.config.num_labels} outputs and task {task.name} needs "
                            f"{task.num_labels}: give a model fine-tuned on {task.name}")
        rows, _ = task_rows(task, cfg.glue_dir, FinetuneConfig(max_len=cfg.max_len), tokenizer, {})
        return rows, make_collate(tokenizer.pad_token_id, task.is_regression)
    if kind in ("classes", "score"):
        raise UserError("a sequence classifier is pruned on its task's data: give --task (with --glue-dir), "
                        "not --corpus")
    return open_corpus(cfg.corpus, tokenizer, "train"), MaskingCollator.for_corpus(MaskingConfig(), tokenizer,
                                                                                   cfg.corpus)


def fixed_batches(rows, collate, n: int, size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`n` batches of `size` rows drawn without replacement, the same for a given seed."""
    if len(rows) < size:
        raise UserError(f"{len(rows)} rows, fewer than one batch of {size}: lower --batch-size")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return [collate([rows[int(i)] for i in order[k * size:(k + 1) * size]], torch.Generator().manual_seed(seed + k))
            for k in range(min(n, len(rows) // size))]


# ---- recovery --------------------------------------------------------------------------------------------
def divergence(kind: Kind, student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """How far the pruned model's outputs are from the unpruned model's, at real tokens."""
    tokens = attention_mask.bool()
    if kind == "classes":
        return kd_kl(student, teacher)
    if kind == "score":
        return logits_mse(student, teacher)
    if kind == "tokens":
        return kd_kl(student, teacher, tokens)
    return binary_kd_kl(student, teacher, tokens)


class RecoveryObjective(Objective):
    """The unpruned model distilled into the pruned one: `logits` (output divergence) + `hid` (hidden MSE)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, weights: dict[str, float]):
        super().__init__(student, teacher, weights)
        family = family_of(student)
        depth, width = family.depth(student.config), family.width(student.config)
        self.kind = output_kind(student)
        self.intermediate = IntermediateLosses(self.active, width, width,
                                               resolve_layer_map(list(range(depth)), depth, depth))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = encoder_inputs(batch, self.student)
        with torch.no_grad():
            t_out = self.teacher(**inputs, output_hidden_states=True)
        s_out = self.student(**inputs, output_hidden_states=True)
        terms = self.intermediate(s_out, t_out, batch["attention_mask"])
        if "logits" in self.active:
            terms["logits"] = divergence(self.kind, s_out.logits, t_out.logits, batch["attention_mask"])
        return terms


RECOVERY_WEIGHTS = {"logits": 1.0, "hid": 1.0}


def recover(model: nn.Module, teacher: nn.Module, rows, collate, tokenizer, cfg: PruneConfig, run_dir: Path,
            step: int) -> dict[str, float]:
    train = TrainConfig(seed=cfg.seed + step, max_steps=cfg.recover_steps, batch_size=cfg.batch_size,
                        micro_batch_size=cfg.batch_size, lr=cfg.recover_lr, warmup_ratio=0.1,
                        log_every=max(1, cfg.recover_steps // 10), save_at_end=False)
    engine = Engine(train, RecoveryObjective(model, teacher, RECOVERY_WEIGHTS), rows, collate, run_dir, cfg,
                    tokenizer=tokenizer)
    summary = engine.fit()
    model.eval()
    return {k: round(v, 5) for k, v in summary.items() if k.startswith("loss/")}


# ---- the command -----------------------------------------------------------------------------------------
def prune(cfg: PruneConfig) -> dict:
    """Prune `cfg.model` into `cfg.output` (HF format, see kd_core.compress.structure for loading it) with a
    pruning.json report; returns the report."""
    problems = cfg.problems()
    if problems:
        raise UserError("; ".join(problems))
    out = check_output(cfg.output, cfg.overwrite, cfg.model)
    model, tokenizer = load_model(cfg.model)
    rows, collate = open_data(cfg, tokenizer, model)
    teacher = copy.deepcopy(model).requires_grad_(False)
    original = head_counts(model), ffn_counts(model)
    rate = rate_for_params(model, cfg.target_params) if cfg.target_params else None
    shares = (rate or cfg.target_heads, rate or cfg.target_ffn)
    for counts, share, what in zip(original, shares, ("heads", "FFN neurons")):
        check_reachable(counts, share, cfg.per_layer, what)
    history = []
    params_before = n_params(model)
    with staged(out) as tmp:
        for step in range(1, cfg.steps + 1):
            batches = fixed_batches(rows, collate, cfg.batches, cfg.batch_size, cfg.seed + 1000 * step)
            head_scores, neuron_scores = importance(model, batches, cfg.importance, teacher, cfg.seed + step)
            prune_model(model, kept_at_step(head_scores, original[0], shares[0], step, cfg.steps, cfg.per_layer),
                        kept_at_step(neuron_scores, original[1], shares[1], step, cfg.steps, cfg.per_layer))
            record = {"step": step, "heads": head_counts(model), "ffn": ffn_counts(model), "params": n_params(model)}
            if cfg.recover_steps:
                record["recovery"] = recover(model, teacher, rows, collate, tokenizer, cfg,
                                             tmp / "recovery" / f"step{step}", step)
            history.append(record)
        save_pruned(model, tokenizer, tmp)
        report = {"config": asdict(cfg), "params_before": params_before, "params_after": n_params(model),
                  "heads_before": original[0], "ffn_before": original[1], "rates": shares,
                  "kept_heads": model.config.kept_heads, "loads_with_from_pretrained": is_stock_loadable(model.config),
                  "history": history}
        (tmp / "pruning.json").write_text(json.dumps(report, indent=1))
    return report
