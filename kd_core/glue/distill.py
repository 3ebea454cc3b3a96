"""Task-specific distillation: a fine-tuned teacher into a student on the same GLUE task.

Terms (weights in TaskDistillConfig; 0 = not computed):
- pred: the teacher's predictions as soft targets, KL(softmax(t/T) || softmax(s/T)) * T^2, or MSE on
        logits (`pred_loss: mse`, as the Korean slides do; always MSE for regression tasks);
- hard: the student's own loss on the gold labels (cross-entropy, or MSE for STS-B);
- emb / hid / att: TinyBERT's intermediate-layer terms (kd_core.intermediate), with projections.
`mode: two-stage` is TinyBERT's schedule: stage 1 trains emb+hid+att only (`stage1_epochs`), stage 2
continues from it with pred (+ hard). The loss functions (kd_core.losses) and layer maps
(kd_core.layer_map) are the ones bert_kd and electra_kd use.
A transfer set (kd_core.glue.transfer: the task's unused training rows, text files) adds unlabelled examples on
which only the teacher's predictions train the student; `hard` counts the labelled rows only. The teacher must be
fine-tuned on the task (its saved config names a *ForSequenceClassification architecture with the task's outputs):
`python -m kd_core.glue --save-model` makes one.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

import numpy as np
from transformers import AutoConfig

from ..checkpoint import seed_everything
from ..errors import UserError
from ..families import family_of
from ..heads import encoder_inputs
from ..intermediate import IntermediateLosses
from ..layer_map import resolve_layer_map
from ..losses import kd_kl, logits_mse
from ..objective import Objective, freeze_head
from .finetune import (EncodedRows, FinetuneConfig, evaluate, labelled_subset, load_examples, load_for_task,
                       make_collate, task_rows, train_and_evaluate)
from .tasks import Task
from .transfer import transfer_examples


@dataclass
class TaskDistillConfig:
    mode: Literal["pred", "two-stage"] = "pred"
    pred_loss: Literal["kl", "mse"] = "kl"
    temperature: float = 1.0
    stage1_epochs: float = 3.0
    layers: str = "uniform_last"  # student layer i imitates this teacher layer (TinyBERT's g(m))
    # as in bert_kd, one weight per logged term: pred and hard train in "pred" mode and in stage 2;
    # emb, hid and att in stage 1 of "two-stage"
    loss_weights: dict[str, float] = field(default_factory=lambda: {"pred": 1.0, "hard": 0.0, "emb": 1.0,
                                                                    "hid": 1.0, "att": 1.0})
    transfer: list[str] = field(default_factory=list)  # text files of unlabelled examples (kd_core.glue.transfer)
    transfer_unlabelled_train: bool = False  # the training rows left out by max_train_examples, without labels
    transfer_max: int = 0  # at most this many transfer examples (0: all)

    def problems(self) -> list[str]:
        out = []
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            out.append(f"temperature is {self.temperature}: give a positive number (1 = the teacher's own softmax)")
        if self.transfer_max < 0:
            out.append(f"transfer_max is {self.transfer_max}: give 0 (all) or more")
        if bad := {k: v for k, v in self.loss_weights.items() if not (math.isfinite(v) and v >= 0)}:
            out.append(f"loss weights {bad} must be non-negative numbers")
        return out


def check_task_teacher(teacher_path: str, task: Task) -> None:
    """A teacher for task distillation must be fine-tuned on the task: a model saved without a classifier (an MLM
    checkpoint, an encoder) would load with a random head and teach noise."""
    config = AutoConfig.from_pretrained(teacher_path)
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        said = ", ".join(architectures) or "no architecture"
        raise UserError(f"teacher {teacher_path} is not fine-tuned on a task (its config says {said}); fine-tune it "
                        f"first: python -m kd_core.glue --model {teacher_path} --tasks {task.name} --save-model ..., "
                        "then give --teacher <that run>/model")
    if config.num_labels != task.num_labels:
        raise UserError(f"the teacher has {config.num_labels} outputs, task {task.name} needs {task.num_labels}: give "
                        f"a teacher fine-tuned on {task.name}")


class TaskDistillObjective(Objective):
    def __init__(self, student: nn.Module, teacher: nn.Module, task: Task, weights: dict[str, float],
                 cfg: TaskDistillConfig):
        super().__init__(student, teacher, weights)
        if student.config.vocab_size != teacher.config.vocab_size:
            raise UserError(f"vocab mismatch: student {student.config.vocab_size} tokens, teacher "
                            f"{teacher.config.vocab_size}; distil between models that share a tokenizer")
        self.task, self.cfg = task, cfg
        s_family, t_family = family_of(student), family_of(teacher)
        layer_map = resolve_layer_map(cfg.layers, t_family.depth(teacher.config), s_family.depth(student.config))
        self.intermediate = IntermediateLosses(self.active, s_family.width(student.config), t_family.width(teacher.config),
                                               layer_map)
        self.intermediate.attach(student, teacher)
        if not self.active & {"pred", "hard"}:
            freeze_head(student)  # stage 1 trains no classifier

    def _run(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        return model(**encoder_inputs(batch, model), output_hidden_states=self.intermediate.needs_hidden_states)

    @property
    def needs_teacher_states(self) -> bool:
        """Whether a step needs the teacher's forward (intermediate terms); else its logits, computed once, suffice."""
        return bool(self.active & {"emb", "hid", "att"})

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t_out = None
        if self.needs_teacher_states or ("pred" in self.active and "teacher_logits" not in batch):
            with torch.no_grad():
                t_out = self._run(self.teacher, batch)
        s_out = self._run(self.student, batch)
        terms = self.intermediate(s_out, t_out, batch["attention_mask"]) if self.needs_teacher_states else {}
        if "pred" in self.active:
            t_logits = batch["teacher_logits"] if t_out is None else t_out.logits
            if self.task.is_regression or self.cfg.pred_loss == "mse":
                terms["pred"] = logits_mse(s_out.logits, t_logits)
            else:
                terms["pred"] = kd_kl(s_out.logits, t_logits, None, self.cfg.temperature)
        if "hard" in self.active:  # gold labels exist on the labelled rows only (a transfer set has none)
            labelled = batch.get("labelled", torch.ones_like(batch["labels"], dtype=torch.bool))
            logits = s_out.logits.float()[labelled]
            labels = batch["labels"][labelled]
            if not len(labels):
                terms["hard"] = s_out.logits.sum() * 0.0  # a batch of transfer rows: no gold term, same graph
            else:
                terms["hard"] = (nn.functional.mse_loss(logits.squeeze(-1), labels) if self.task.is_regression
                                 else nn.functional.cross_entropy(logits, labels))
        return terms


def stage_weights(cfg: TaskDistillConfig) -> list[tuple[str, dict[str, float], float | None]]:
    """(name, loss weights, epochs) of each stage; epochs None means the fine-tuning config's."""
    unknown = sorted(set(cfg.loss_weights) - {"pred", "hard", "emb", "hid", "att"})
    if unknown:
        raise UserError(f"unknown task-distillation term(s) {unknown}; terms: pred, hard, emb, hid, att")
    weight = {k: cfg.loss_weights.get(k, 0.0) for k in ("pred", "hard", "emb", "hid", "att")}
    prediction = {k: weight[k] for k in ("pred", "hard")}
    if cfg.mode == "pred":
        return [("pred", prediction, None)]
    return [("stage1", {k: weight[k] for k in ("emb", "hid", "att")}, cfg.stage1_epochs), ("stage2", prediction, None)]


def with_teacher_logits(teacher: nn.Module, rows: EncodedRows, collate, batch_size: int, cache: dict) -> EncodedRows:
    """The rows, each with the teacher's logits on it (eval mode: what every step would recompute), computed once
    and reused by every seed and epoch of a grid; the cache key holds the teacher's weights and every input."""
    digest = hashlib.sha256()
    for p in teacher.state_dict().values():
        digest.update(p.detach().cpu().numpy().tobytes())
    for r in rows:
        digest.update(r["input_ids"].numpy().tobytes() + b"|")
    key = ("teacher_logits", digest.hexdigest())
    if key not in cache:
        teacher.eval()
        order = np.argsort(rows.lengths())
        logits = torch.zeros(len(rows), teacher.config.num_labels)
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                idx = order[start:start + batch_size]
                batch = {k: v.to(teacher.device) for k, v in collate([rows[i] for i in idx]).items()}
                logits[torch.as_tensor(idx)] = teacher(**encoder_inputs(batch, teacher)).logits.float()
        cache[key] = logits
    return EncodedRows({**r, "teacher_logits": cache[key][i]} for i, r in enumerate(rows))


def distill_and_evaluate(student_path: str, teacher_path: str, task: Task, glue_dir: str | None,
                         cfg: FinetuneConfig, dcfg: TaskDistillConfig, seed: int, output_dir: str | Path,
                         data_cache: dict | None = None) -> dict:
    t0 = time.perf_counter()
    check_task_teacher(teacher_path, task)
    seed_everything(seed)
    student, tokenizer = load_for_task(student_path, task)
    teacher, _ = load_for_task(teacher_path, task)
    cache = data_cache if data_cache is not None else {}
    load_examples(task, glue_dir, cache)
    _, left_out = labelled_subset(cache[(task.name, "train")], cfg.max_train_examples)
    transfer = transfer_examples(task, dcfg.transfer, left_out, dcfg.transfer_unlabelled_train, dcfg.transfer_max)
    train_rows, dev = task_rows(task, glue_dir, cfg, tokenizer, cache, transfer)
    stages = {}
    for name, weights, epochs in stage_weights(dcfg):
        student.requires_grad_(True)  # stage 1 froze the classifier; stage 2 trains it
        objective = TaskDistillObjective(student, teacher, task, weights, dcfg)
        rows = train_rows if objective.needs_teacher_states else with_teacher_logits(
            teacher, train_rows, make_collate(tokenizer.pad_token_id, task.is_regression), cfg.eval_batch_size, cache)
        run = train_and_evaluate(objective, tokenizer, task, rows, cfg, seed, Path(output_dir) / name, epochs)
        objective.intermediate.detach_probes()
        stages[name] = {"weights": weights, "steps": run["steps"],
                        "final": {k: v for k, v in run["summary"].items() if k.startswith("loss/")}}
    return {**evaluate(student, tokenizer, task, dev, cfg, run["device"]), "seed": seed, "teacher": teacher_path,
            "distill": dcfg.__dict__, "stages": stages, "train_examples": len(train_rows) - len(transfer),
            "transfer_examples": len(transfer),
            "wall_s": round(time.perf_counter() - t0, 1)}
