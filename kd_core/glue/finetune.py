"""Fine-tuning one model on one GLUE task through the kd_core engine, and dev-set evaluation."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from ..checkpoint import seed_everything
from ..files import atomic_dir, commit_dir
from ..config import load_config
from ..data import pad_rows
from ..engine import Engine, TrainConfig
from ..errors import UserError, one_line
from ..families import family_of
from ..heads import encoder_inputs
from ..objective import Objective
from .data import Example, load_split
from .metrics import combined_score, split_metrics
from .tasks import Task


@dataclass
class FinetuneConfig:
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    micro_batch_size: int = 0  # 0: the whole batch in one forward
    max_len: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    layerwise_lr_decay: float = 1.0
    mixed_precision: str = "no"
    group_by_length: bool = True
    max_train_examples: int = 0  # 0: all (a subset keeps SST-2 inside a CPU budget)
    eval_batch_size: int = 128
    save_model: bool = False  # keep the fine-tuned model in <run>/model (a teacher for task distillation)
    train: dict = field(default_factory=dict)  # any other TrainConfig key, e.g. {max_grad_norm: 1.0}
    task_epochs: dict[str, float] = field(default_factory=dict)  # per task, over `epochs`: {stsb: 3} (regression starts slower)

    def epochs_for(self, task: str) -> float:
        return self.task_epochs.get(task, self.epochs)


class EncodedRows(list):
    """Tokenized examples; `lengths()` lets the engine group batches by length."""

    def lengths(self) -> np.ndarray:
        return np.array([len(r["input_ids"]) for r in self])


def encode(tokenizer, examples: list[Example], max_len: int) -> EncodedRows:
    a = [e.text_a for e in examples]
    b = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_len)
    rows = EncodedRows()
    for i, e in enumerate(examples):
        row = {"input_ids": torch.tensor(enc["input_ids"][i]), "label": e.label}
        if "token_type_ids" in enc:
            row["token_type_ids"] = torch.tensor(enc["token_type_ids"][i])
        rows.append(row)
    return rows


def make_collate(pad_id: int, regression: bool):
    """Padded batches; `labelled` marks rows with a gold label (a transfer set's rows have none: label NaN)."""
    def collate(rows: list[dict], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        ids, attention = pad_rows([r["input_ids"] for r in rows], pad_id)
        labels = torch.tensor([r["label"] for r in rows], dtype=torch.float32)
        batch = {"input_ids": ids, "attention_mask": attention, "labelled": ~torch.isnan(labels),
                 "labels": labels if regression else torch.nan_to_num(labels).long()}
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"], _ = pad_rows([r["token_type_ids"] for r in rows], 0)
        if "teacher_logits" in rows[0]:  # task distillation: the teacher's predictions, computed once
            batch["teacher_logits"] = torch.stack([r["teacher_logits"] for r in rows])
        return batch
    return collate


class ClassificationObjective(Objective):
    """Cross-entropy on labels, or MSE on the score for regression (STS-B)."""

    def __init__(self, student: nn.Module, regression: bool):
        super().__init__(student, None, {"task": 1.0})
        self.regression = regression

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.student(**encoder_inputs(batch, self.student)).logits.float()
        if self.regression:
            return {"task": nn.functional.mse_loss(logits.squeeze(-1), batch["labels"])}
        return {"task": nn.functional.cross_entropy(logits, batch["labels"])}


@torch.no_grad()
def predict(model: nn.Module, rows: EncodedRows, collate, batch_size: int, device) -> np.ndarray:
    """Dev-set predictions in row order: class indices, or scores for regression."""
    model.eval()
    order = np.argsort(rows.lengths())  # length-sorted batches: little padding
    out = np.zeros(len(rows), dtype=np.float64)
    for start in range(0, len(rows), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
        logits = model(**encoder_inputs(batch, model)).logits.float()
        values = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1).float()
        # argmax would turn NaN logits into a class: keep them NaN so split_metrics sees the divergence
        out[idx] = torch.where(torch.isfinite(logits).all(-1), values, torch.nan).cpu().numpy()
    return out


def train_config(cfg: FinetuneConfig, n_train: int, seed: int) -> TrainConfig:
    steps_per_epoch = max(n_train // cfg.batch_size, 1)
    own = {"seed": seed, "max_steps": max(math.ceil(cfg.epochs * steps_per_epoch), 1),
           "batch_size": cfg.batch_size, "micro_batch_size": cfg.micro_batch_size or cfg.batch_size,
           "lr": cfg.lr, "warmup_ratio": cfg.warmup_ratio, "weight_decay": cfg.weight_decay,
           "layerwise_lr_decay": cfg.layerwise_lr_decay, "mixed_precision": cfg.mixed_precision,
           "group_by_length": cfg.group_by_length, "schedule": "linear", "log_every": 10, "save_at_end": False}
    if twice := sorted(set(cfg.train) & set(own)):  # one way to set each knob: the dict must not silently win
        raise UserError(f"finetune.train sets {twice}, which the fine-tuning config sets itself; set them there "
                        "(e.g. finetune.lr, finetune.epochs), and keep finetune.train for other engine keys")
    return load_config(TrainConfig, overrides=[f"{k}={v}" for k, v in {**own, **cfg.train}.items()])


def _load(loader, model_path: str, **kwargs):
    """`loader.from_pretrained(model_path)`, or a UserError naming the path and the fix."""
    try:
        return loader.from_pretrained(model_path, **kwargs)
    except (OSError, ValueError) as e:  # transformers' errors for a missing folder, no config.json, an unknown name
        found = one_line(e) if Path(model_path).exists() else "no such directory, nor a reachable hub model"
        raise UserError(f"cannot load model '{model_path}' ({found}): give a directory saved with save_pretrained "
                        "(with its tokenizer), or a hub name") from e


def check_model(model_path: str) -> None:
    """Before any training: the model's config and its tokenizer load."""
    _load(AutoConfig, model_path)
    _load(AutoTokenizer, model_path)


def check_positions(model_path: str, max_len: int, examples: list[Example]) -> None:
    """No input may be longer than the model's position embeddings (it would index past them). Only a
    max_len over them needs the examples tokenized, and is an error only if one of them is that long."""
    config = _load(AutoConfig, model_path)
    positions = family_of(config).max_length(config)
    if max_len <= positions:
        return
    longest = int(encode(_load(AutoTokenizer, model_path), examples, max_len).lengths().max())
    if longest > positions:
        raise UserError(f"max_len {max_len} lets through inputs of {longest} tokens, over the {positions} "
                        f"positions of '{model_path}'; use --max-len {positions} or less")


def load_for_task(model_path: str, task: Task):
    model = _load(AutoModelForSequenceClassification, model_path, num_labels=task.num_labels, dtype=torch.float32)
    return model, _load(AutoTokenizer, model_path)


def load_examples(task: Task, glue_dir: str | None, cache: dict) -> None:
    """Read the task's train and dev splits into `cache` (keyed (task, split)) unless they are there."""
    for split in ("train", *task.dev_splits):
        if (task.name, split) not in cache:
            cache[(task.name, split)] = load_split(task, split, glue_dir)


def labelled_subset(examples: list[Example], limit: int) -> tuple[list[Example], list[Example]]:
    """(at most `limit` training rows, a fixed draw (seed 0), in file order; the rows left out). 0: all rows."""
    if not limit or len(examples) <= limit:
        return examples, []
    picked = set(np.random.default_rng(0).permutation(len(examples))[:limit].tolist())
    return ([e for i, e in enumerate(examples) if i in picked], [e for i, e in enumerate(examples) if i not in picked])


def task_rows(task: Task, glue_dir: str | None, cfg: FinetuneConfig, tokenizer, cache: dict,
              extra_train: list[Example] | None = None) -> tuple[EncodedRows, dict[str, tuple[EncodedRows, np.ndarray]]]:
    """Encoded train rows (optionally a fixed subset, then `extra_train`, e.g. a transfer set) and, per dev split,
    encoded rows and labels."""
    load_examples(task, glue_dir, cache)
    train_examples, _ = labelled_subset(cache[(task.name, "train")], cfg.max_train_examples)
    dev = {split: (encode(tokenizer, cache[(task.name, split)], cfg.max_len),
                   np.array([e.label for e in cache[(task.name, split)]])) for split in task.dev_splits}
    return encode(tokenizer, train_examples + list(extra_train or []), cfg.max_len), dev


def train_and_evaluate(objective: Objective, tokenizer, task: Task, train_rows,
                       cfg: FinetuneConfig, seed: int, output_dir: str | Path, epochs: float | None = None) -> dict:
    """Train `objective` on the task's rows through the engine; returns the train summary and steps."""
    collate = make_collate(tokenizer.pad_token_id, task.is_regression)
    tcfg = train_config(FinetuneConfig(**{**cfg.__dict__, "epochs": epochs or cfg.epochs_for(task.name)}), len(train_rows), seed)
    engine = Engine(tcfg, objective, train_rows, collate, output_dir, tcfg, tokenizer=tokenizer)
    summary = engine.fit()
    return {"summary": summary, "steps": tcfg.max_steps, "device": engine.accelerator.device}


def evaluate(model: nn.Module, tokenizer, task: Task, dev: dict, cfg: FinetuneConfig, device) -> dict:
    """Every metric of every dev split, and the per-example predictions and labels behind them (kept in
    result.json so two models can be compared example by example: kd_core.glue.compare)."""
    collate = make_collate(tokenizer.pad_token_id, task.is_regression)
    metrics: dict[str, float] = {}
    examples: dict[str, dict[str, list[float]]] = {}
    for split, (rows, labels) in dev.items():
        predictions = predict(model, rows, collate, cfg.eval_batch_size, device)
        metrics.update(split_metrics(task, predictions, labels, split))
        examples[split] = {"predictions": predictions.tolist(), "labels": np.asarray(labels, dtype=float).tolist()}
    return {"metrics": metrics, "combined": combined_score(task, metrics), "dev_examples": examples}


def finetune_and_evaluate(model_path: str, task: Task, glue_dir: str | None, cfg: FinetuneConfig, seed: int,
                          output_dir: str | Path, data_cache: dict | None = None) -> dict:
    """Fine-tune on train, evaluate on every dev split: every metric, the combined score, wall time."""
    t0 = time.perf_counter()
    seed_everything(seed)
    model, tokenizer = load_for_task(model_path, task)
    train_rows, dev = task_rows(task, glue_dir, cfg, tokenizer, data_cache if data_cache is not None else {})
    run = train_and_evaluate(ClassificationObjective(model, task.is_regression), tokenizer, task,
                             train_rows, cfg, seed, output_dir)
    scores = evaluate(model, tokenizer, task, dev, cfg, run["device"])
    saved = {}
    if cfg.save_model:  # a fine-tuned teacher for task distillation (and `prune --importance task`)
        tmp = atomic_dir(Path(output_dir) / "model")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        commit_dir(tmp, Path(output_dir) / "model")
        saved = {"model_dir": str(Path(output_dir).resolve() / "model")}
    return {**scores, **saved, "seed": seed, "train_examples": len(train_rows), "steps": run["steps"],
            "final_train_loss": run["summary"].get("loss/task"), "wall_s": round(time.perf_counter() - t0, 1)}
