"""Task-specific distillation: a fine-tuned teacher into a student on the same GLUE task.

Terms (weights in TaskDistillConfig; 0 = not computed):
- pred: the teacher's predictions as soft targets, KL(softmax(t/T) || softmax(s/T)) * T^2, or MSE on
        logits (`pred_loss: mse`, as the Korean slides do; always MSE for regression tasks);
- hard: the student's own loss on the gold labels (cross-entropy, or MSE for STS-B);
- emb / hid / att: TinyBERT's intermediate-layer terms (kd_core.intermediate), with projections.
`mode: two-stage` is TinyBERT's schedule: stage 1 trains emb+hid+att only (`stage1_epochs`), stage 2
continues from it with pred (+ hard). The loss functions (kd_core.losses) and layer maps
(kd_core.layer_map) are the ones bert_kd and electra_kd use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..checkpoint import seed_everything
from ..errors import UserError
from ..families import family_of
from ..heads import encoder_inputs
from ..intermediate import IntermediateLosses
from ..layer_map import resolve_layer_map
from ..losses import kd_kl, logits_mse
from ..objective import Objective, freeze_head
from .finetune import FinetuneConfig, evaluate, load_for_task, task_rows, train_and_evaluate
from .tasks import Task


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


class TaskDistillObjective(Objective):
    def __init__(self, student: nn.Module, teacher: nn.Module, task: Task, weights: dict[str, float],
                 cfg: TaskDistillConfig):
        super().__init__(student, teacher, weights)
        if student.config.vocab_size != teacher.config.vocab_size:
            raise UserError(f"vocab mismatch: student {student.config.vocab_size} tokens, teacher "
                            f"{teacher.config.vocab_size}; distil between models that share a tokenizer")
        if getattr(teacher.config, "num_labels", None) != task.num_labels:
            raise UserError(f"the teacher has {teacher.config.num_labels} outputs, task {task.name} needs "
                            f"{task.num_labels}: give a teacher fine-tuned on {task.name}")
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

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t_out = self._run(self.teacher, batch)
        s_out = self._run(self.student, batch)
        terms = self.intermediate(s_out, t_out, batch["attention_mask"])
        if "pred" in self.active:
            if self.task.is_regression or self.cfg.pred_loss == "mse":
                terms["pred"] = logits_mse(s_out.logits, t_out.logits)
            else:
                terms["pred"] = kd_kl(s_out.logits, t_out.logits, None, self.cfg.temperature)
        if "hard" in self.active:
            logits = s_out.logits.float()
            terms["hard"] = (nn.functional.mse_loss(logits.squeeze(-1), batch["labels"]) if self.task.is_regression
                             else nn.functional.cross_entropy(logits, batch["labels"]))
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


def distill_and_evaluate(student_path: str, teacher_path: str, task: Task, glue_dir: str | None,
                         cfg: FinetuneConfig, dcfg: TaskDistillConfig, seed: int, output_dir: str | Path,
                         data_cache: dict | None = None) -> dict:
    t0 = time.perf_counter()
    seed_everything(seed)
    student, tokenizer = load_for_task(student_path, task)
    teacher, _ = load_for_task(teacher_path, task)
    train_rows, dev = task_rows(task, glue_dir, cfg, tokenizer, data_cache if data_cache is not None else {})
    stages = {}
    for name, weights, epochs in stage_weights(dcfg):
        student.requires_grad_(True)  # stage 1 froze the classifier; stage 2 trains it
        objective = TaskDistillObjective(student, teacher, task, weights, dcfg)
        run = train_and_evaluate(objective, tokenizer, task, train_rows, cfg, seed,
                                 Path(output_dir) / name, epochs)
        objective.intermediate.detach_probes()
        stages[name] = {"weights": weights, "steps": run["steps"],
                        "final": {k: v for k, v in run["summary"].items() if k.startswith("loss/")}}
    return {**evaluate(student, tokenizer, task, dev, cfg, run["device"]), "seed": seed, "teacher": teacher_path,
            "distill": dcfg.__dict__, "stages": stages, "train_examples": len(train_rows),
            "wall_s": round(time.perf_counter() - t0, 1)}
