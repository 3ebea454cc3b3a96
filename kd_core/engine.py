"""The training engine every objective runs through: one readable loop, full checkpoints, resume.

`Engine.step(micro_batches) -> dict` is one optimizer step; `Engine.fit()` is the loop around it
(data order, logging, evaluation, checkpoints). accelerate supplies device placement, mixed
precision (GradScaler for fp16) and DDP; everything else is here, visible.

Data order is a pure function of (seed, step): step k always trains on global batch k of the
seeded epoch permutations, and each micro-batch's masking RNG is seeded from its position. So a
resumed run sees exactly the batches an uninterrupted run would, and 1 process with gradient
accumulation sees the same micro-batches as N processes with the same global batch.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from .checkpoint import (STATE_FILE, atomic_dir, atomic_write_text, commit_dir, newest_checkpoint,
                         prune_checkpoints, read_state, rng_state, seed_everything, set_rng_state)
from .config import dump_config, flatten, to_dict, yaml_load
from .metrics_log import MetricsLog
from .objective import Objective, weighted_total
from .optim import build_optimizer, build_scheduler, warmup_steps
from .student import num_layers

Collate = Callable[[list, torch.Generator], dict]


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, all processes and accumulation together
    micro_batch_size: int = 32  # sequences per forward pass on one process
    lr: float = 5e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0  # 0 disables clipping; the norm is logged either way
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end (when there is held-out data)
    eval_batches: int = 20
    save_every: int = 0  # 0: checkpoint only at the end
    keep_checkpoints: int = 2
    max_consecutive_nonfinite: int = 5
    num_workers: int = 0
    group_by_length: bool = False  # batch rows of similar length together (for one-segment-per-row corpora)
    layerwise_lr_decay: float = 1.0  # < 1: lower layers learn slower (ELECTRA fine-tuning: 0.8)
    save_at_end: bool = True  # final checkpoint and final/ model (grids of fine-tuning cells turn it off)
    compile: bool = False  # torch.compile the student's and teacher's encoders (GPU; fixed shapes compile once)
    teacher_half: bool = False  # keep the frozen teacher's weights in the mixed-precision dtype (bf16/fp16)


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses for too many consecutive steps."""


def batch_seed(seed: int, epoch: int, batch: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch, micro]).generate_state(1)[0])


class GlobalBatchSampler:
    """Yields this process's micro-batches of (row index, masking seed), global batch by global batch.

    Global batch g of the run is batch g % n_batches of epoch g // n_batches (incomplete tail
    batches are dropped so every step has the same size). It is split into micro-batches; process
    r takes micro-batches r, r + world, r + 2*world, ...
    """

    def __init__(self, n_rows: int, batch_size: int, micro_batch_size: int, rank: int, world: int,
                 seed: int, start_batch: int = 0, shuffle: bool = True, lengths: np.ndarray | None = None):
        if batch_size % (micro_batch_size * world):
            raise ValueError(f"train.batch_size={batch_size} must be a multiple of micro_batch_size "
                             f"({micro_batch_size}) x processes ({world})")
        self.n_batches = n_rows // batch_size
        if self.n_batches == 0:
            raise ValueError(f"the dataset has {n_rows} rows, fewer than one batch of {batch_size}; "
                             "lower train.batch_size or give more data")
        self.n_rows, self.batch_size, self.micro = n_rows, batch_size, micro_batch_size
        self.rank, self.world, self.seed, self.start, self.shuffle = rank, world, seed, start_batch, shuffle
        self.lengths = None if lengths is None else torch.as_tensor(np.asarray(lengths), dtype=torch.long)
        self._epoch, self._order = -1, None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Row order of an epoch. With lengths: shuffled, then sorted by length inside windows of 50
        batches, cut into batches, and the batches shuffled (DistilBERT-style length grouping)."""
        if not self.shuffle:
            return torch.arange(self.n_rows)
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.n_rows, generator=gen)
        if self.lengths is None:
            return order
        used = order[:self.n_batches * self.batch_size]
        window = 50 * self.batch_size
        chunks = [c[torch.argsort(self.lengths[c], stable=True)] for c in used.split(window)]
        batches = torch.cat(chunks).view(self.n_batches, self.batch_size)
        return batches[torch.randperm(self.n_batches, generator=gen)].flatten()

    def __iter__(self):
        g = self.start
        while True:
            epoch, b = divmod(g, self.n_batches)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, self.epoch_order(epoch)
            micro = self._order[b * self.batch_size:(b + 1) * self.batch_size].view(-1, self.micro)
            for j in range(self.rank, len(micro), self.world):
                s = batch_seed(self.seed, epoch, b, j)
                yield [(int(i), s) for i in micro[j]]
            g += 1


class _SeededRows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        index, seed = key
        return self.rows[index], seed


class _SeededCollate:
    def __init__(self, collate: Collate):
        self.collate = collate

    def __call__(self, items):
        return self.collate([row for row, _ in items], torch.Generator().manual_seed(items[0][1]))


def count_tokens(batch: dict) -> torch.Tensor:
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    return torch.tensor(batch["input_ids"].numel())


class Engine:
    """Trains `objective` on `train_rows` with `collate`; writes everything into `output_dir`.

    loss_weights: weight of each term the objective returns (0 = the objective skips it).
    run_config: the whole resolved config (a dataclass); saved as config.yaml and in checkpoints.
    """

    def __init__(self, train: TrainConfig, objective: Objective, loss_weights: dict[str, float],
                 train_rows: Sequence, collate: Collate, output_dir: str | Path, run_config: Any,
                 tokenizer=None, eval_rows: Sequence | None = None, resume: bool = False):
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
        self.cfg, self.loss_weights = train, dict(loss_weights)
        self.output_dir = Path(output_dir)
        self.run_config, self.tokenizer = run_config, tokenizer
        self.train_rows, self.eval_rows, self.collate = train_rows, eval_rows, collate
        # accelerate keeps one precision per process; engines run one after another (distil, then fine-tune)
        # may differ, so reset it (the distributed PartialState is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        # cpu=True is what makes accelerate run multi-process CPU (gloo) under torchrun / accelerate launch
        self.accelerator = Accelerator(mixed_precision=train.mixed_precision, cpu=not torch.cuda.is_available())
        acc = self.accelerator
        if train.mixed_precision == "fp16" and acc.device.type == "cpu":
            # accelerate would silently train in fp32 here: refuse instead of a no-op flag
            raise ValueError("train.mixed_precision=fp16 needs a GPU; on CPU use bf16 or no")
        self.output_dir.mkdir(parents=True, exist_ok=True)

        self.objective = objective
        fused = acc.device.type == "cuda"
        optimizer = build_optimizer(objective, train.lr, train.weight_decay,
                                    (train.adam_beta1, train.adam_beta2), train.adam_eps, fused,
                                    train.layerwise_lr_decay, num_layers(objective.student.config))
        n_warmup = warmup_steps(train.max_steps, train.warmup_steps, train.warmup_ratio)
        # the scheduler is not prepared by accelerate: it steps once per optimizer step, on every process
        self.scheduler = build_scheduler(optimizer, train.schedule, train.max_steps, n_warmup)
        self.deepspeed = acc.state.deepspeed_plugin is not None
        if self.deepspeed:  # DeepSpeed accumulates and scales by 1/accumulation itself (path not exercised here)
            acc.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=train.micro_batch_size, gradient_accumulation_steps=self.accumulation)
        self.model, self.optimizer = acc.prepare(objective, optimizer)
        if train.teacher_half and objective.teacher is not None and train.mixed_precision != "no":
            objective.teacher.to(torch.bfloat16 if train.mixed_precision == "bf16" else torch.float16)
        if train.compile:
            for model in (objective.student, objective.teacher):
                if model is not None:
                    model.base_model.compile()

        if acc.is_main_process:
            print(f"engine: {acc.num_processes} process(es) on {acc.device}, precision {train.mixed_precision}, "
                  f"global batch {train.batch_size} = {train.micro_batch_size} x {self.accumulation} accumulation "
                  f"x {acc.num_processes} process(es)")
        self.step_count = 0
        self.counts = {"skipped_overflow": 0, "skipped_nonfinite": 0, "consecutive_nonfinite": 0,
                       "tokens_seen": 0}
        resume_from = newest_checkpoint(self.output_dir) if resume else None
        if resume and resume_from is None and acc.is_main_process:
            print(f"--resume: no complete checkpoint in {self.output_dir}; starting from scratch")
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if acc.is_main_process:
            atomic_write_text(self.output_dir / "config.yaml", dump_config(run_config))
            self.log = MetricsLog(self.output_dir, resume_step=self.step_count if resume_from else None)
            self.log.log_config(to_dict(run_config), dump_config(run_config),
                                ["loss/total"] + [f"loss/{k}" for k in self.loss_weights])

    # ---- data ---------------------------------------------------------------------------------
    def _loader(self, rows: Sequence, start_batch: int, shuffle: bool, seed: int) -> DataLoader:
        acc = self.accelerator
        lengths = rows.lengths() if self.cfg.group_by_length and shuffle else None
        sampler = GlobalBatchSampler(len(rows), self.cfg.batch_size, self.cfg.micro_batch_size,
                                     acc.process_index, acc.num_processes, seed, start_batch, shuffle, lengths)
        return DataLoader(_SeededRows(rows), batch_sampler=sampler, collate_fn=_SeededCollate(self.collate),
                          num_workers=self.cfg.num_workers, pin_memory=acc.device.type == "cuda",
                          persistent_workers=False)

    @property
    def accumulation(self) -> int:
        return self.cfg.batch_size // (self.cfg.micro_batch_size * self.accelerator.num_processes)

    # ---- one optimizer step -------------------------------------------------------------------
    def step(self, micro_batches: list[dict]) -> dict[str, Any]:
        """Forward/backward over the micro-batches, then one optimizer step (or a counted skip)."""
        acc, n = self.accelerator, len(micro_batches)
        self.model.train()
        raw: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=acc.device)
        tokens = torch.zeros((), device=acc.device, dtype=torch.long)
        for i, batch in enumerate(micro_batches):
            batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
            sync = contextlib.nullcontext() if i == n - 1 else acc.no_sync(self.model)
            with sync:
                terms = self.model(batch)
                loss, w_terms = weighted_total(terms, self.loss_weights)
                acc.backward(loss if self.deepspeed else loss / n)
            for k, v in terms.items():
                raw[k] = raw.get(k, 0) + v.detach().float() / n
                weighted[k] = weighted.get(k, 0) + w_terms[k].detach() / n
            total += loss.detach() / n
            tokens += count_tokens(batch).to(acc.device)

        finite = torch.isfinite(total).float()
        if acc.num_processes > 1:
            finite = acc.reduce(finite, "min")
        out: dict[str, Any] = {"raw": raw, "weighted": weighted, "total": total, "tokens": tokens}
        if not bool(finite):  # one host sync per step, needed to decide whether to update
            self.optimizer.zero_grad(set_to_none=True)
            self.counts["skipped_nonfinite"] += 1
            self.counts["consecutive_nonfinite"] += 1
            out["nonfinite_terms"] = sorted(k for k, v in raw.items() if not torch.isfinite(v))
            self.scheduler.step()
            return out
        self.counts["consecutive_nonfinite"] = 0
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        out["grad_norm"] = acc.clip_grad_norm_(self.objective.parameters(), max_norm)
        scale_before = self._loss_scale()
        self.optimizer.step()
        # fp16 overflow: the GradScaler skipped the update and lowered the scale. (accelerate's
        # optimizer_step_was_skipped misses this with fused AdamW, which skips inside its kernel.)
        if self._loss_scale() < scale_before:
            self.counts["skipped_overflow"] += 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        acc, cfg = self.accelerator, self.cfg
        loader = iter(self._loader(self.train_rows, self.step_count, True, cfg.seed))
        bar = tqdm(total=cfg.max_steps, initial=self.step_count, disable=not acc.is_main_process,
                   desc="train", dynamic_ncols=True)
        interval = _Interval()
        last_logged: dict[str, float] = {}
        t_last = time.perf_counter()
        try:
            while self.step_count < cfg.max_steps:
                micro = [next(loader) for _ in range(self.accumulation)]
                lr = self.scheduler.get_last_lr()[0]
                out = self.step(micro)
                self.step_count += 1
                interval.add(out)
                if "nonfinite_terms" in out:
                    self._on_nonfinite(out["nonfinite_terms"])
                if self.step_count % cfg.log_every == 0 or self.step_count == cfg.max_steps:
                    now = time.perf_counter()
                    last_logged = self._log(interval, now - t_last, lr)
                    bar.set_postfix(loss=f"{last_logged.get('loss/total', float('nan')):.4g}",
                                    tok_s=f"{last_logged['tokens_per_s']:.0f}")
                    interval, t_last = _Interval(), now
                if self.eval_rows is not None and cfg.eval_every and self.step_count % cfg.eval_every == 0:
                    last_logged.update(self.evaluate())
                if cfg.save_every and self.step_count % cfg.save_every == 0 and self.step_count < cfg.max_steps:
                    self.save_checkpoint()
                bar.update(1)
        finally:
            bar.close()
        if self.eval_rows is not None and not (cfg.eval_every and self.step_count % cfg.eval_every == 0):
            last_logged.update(self.evaluate())
        if cfg.save_at_end:
            self.save_checkpoint()
            self.save_final()
        if acc.is_main_process:
            self.log.close()
        return last_logged

    def _log(self, interval: "_Interval", seconds: float, lr: float) -> dict[str, float]:
        record = interval.summary(self.accelerator, seconds)
        record.update(lr=lr, epoch=self._epoch(), loss_scale=self._loss_scale())
        record.update({f"skipped/{k.removeprefix('skipped_')}": v for k, v in self.counts.items()
                       if k.startswith("skipped_")})
        self.counts["tokens_seen"] += record.pop("tokens")
        record["tokens_seen"] = self.counts["tokens_seen"]
        if self.accelerator.is_main_process:
            self.log.log(self.step_count, record)
        return record

    def _epoch(self) -> float:
        n_batches = len(self.train_rows) // self.cfg.batch_size
        return self.step_count / n_batches

    def _loss_scale(self) -> float:
        scaler = self.accelerator.scaler
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _on_nonfinite(self, terms: list[str]) -> None:
        n, limit = self.counts["consecutive_nonfinite"], self.cfg.max_consecutive_nonfinite
        if self.accelerator.is_main_process:
            tqdm.write(f"step {self.step_count}: non-finite loss in {terms or ['total']}; step skipped "
                       f"({n} in a row, limit {limit})")
        if n >= limit:
            path = self.save_checkpoint()
            raise NonFiniteLossError(
                f"step {self.step_count}: loss term(s) {terms or ['total']} were non-finite for {n} "
                f"consecutive steps (train.max_consecutive_nonfinite={limit}). The last good state is "
                f"saved in {path}; lower train.lr, check the data, or use bf16 instead of fp16, then --resume.")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean of every loss term over the held-out rows (fixed masking seed: comparable over time)."""
        acc = self.accelerator
        self.model.eval()
        n_batches = min(self.cfg.eval_batches, len(self.eval_rows) // self.cfg.batch_size)
        if n_batches == 0:
            return {}
        loader = iter(self._loader(self.eval_rows, 0, False, seed=12345))
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for _ in range(n_batches * self.accumulation):
            batch = {k: v.to(acc.device) for k, v in next(loader).items()}
            terms = self.model(batch)
            total, _ = weighted_total(terms, self.loss_weights)
            for k, v in {**terms, "total": total}.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            count += 1
        record = {f"eval/loss/{k}": float(acc.reduce(v / count, "mean")) for k, v in sums.items()}
        if acc.is_main_process:
            self.log.log(self.step_count, record)
        self.model.train()
        return record

    # ---- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Student (HF format) + tokenizer, extras, optimizer, scheduler, scaler, RNG of every process,
        data position and config, written to a temporary directory and renamed when complete."""
        acc = self.accelerator
        final = self.output_dir / f"checkpoint-{self.step_count}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            atomic_dir(final)
        acc.wait_for_everyone()
        torch.save(rng_state(), tmp / f"rng-{acc.process_index}.pt")
        if acc.is_main_process:
            self._save_student(tmp / "student")
            torch.save(self.objective.extras_state_dict(), tmp / "extras.pt")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if acc.scaler is not None:
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
            (tmp / "config.yaml").write_text(dump_config(self.run_config))
            state = {"step": self.step_count, "epoch": self._epoch(), "data_position": self.step_count,
                     "world_size": acc.num_processes, **self.counts}
            # the state file is written last: its presence marks the directory complete
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        acc.wait_for_everyone()
        if acc.is_main_process:
            commit_dir(tmp, final)
            prune_checkpoints(self.output_dir, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()
        return final

    def _save_student(self, path: Path) -> None:
        self.objective.student.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)

    def load_checkpoint(self, path: Path) -> None:
        acc = self.accelerator
        state = read_state(path)
        self._check_same_config(path)
        student = self.objective.student
        saved = type(student).from_pretrained(path / "student", dtype=torch.float32)
        student.load_state_dict(saved.state_dict())
        extras = torch.load(path / "extras.pt", map_location="cpu")
        missing, unexpected = self.objective.load_state_dict(extras, strict=False)
        unexpected = [k for k in unexpected]
        missing = [k for k in missing if not k.startswith(("student.", "teacher."))]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint {path}: extras do not match the objective "
                               f"(missing {missing}, unexpected {unexpected})")
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
        if acc.scaler is not None and (path / "scaler.pt").exists():
            acc.scaler.load_state_dict(torch.load(path / "scaler.pt"))
        rng_file = path / f"rng-{acc.process_index}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            seed_everything(self.cfg.seed + state["step"] + acc.process_index)
            print(f"warning: {rng_file} missing (process count changed from {state['world_size']}); "
                  "RNG reseeded, so dropout draws differ from the original run")
        self.step_count = state["step"]
        self.counts.update({k: state[k] for k in self.counts if k in state})
        if acc.is_main_process:
            print(f"resumed from {path} at step {self.step_count}")

    def _check_same_config(self, path: Path) -> None:
        """Resuming under a different config would silently mix two runs; only a longer run is allowed."""
        saved = flatten(yaml_load((path / "config.yaml").read_text()))
        current = flatten(to_dict(self.run_config))
        differ = sorted(k for k in saved.keys() | current.keys()
                        if saved.get(k) != current.get(k) and not k.endswith("max_steps"))
        if differ:
            raise ValueError(f"--resume: the config differs from the checkpoint's in {differ} ({path / 'config.yaml'}); "
                             "resume with the saved config (only train.max_steps may change) or use a new --output-dir")

    def save_final(self) -> Path:
        """`final/`: the student in HF format with its tokenizer, loadable by from_pretrained."""
        acc = self.accelerator
        final = self.output_dir / "final"
        if acc.is_main_process:
            tmp = atomic_dir(final)
            self._save_student(tmp)
            (tmp / "config.yaml").write_text(dump_config(self.run_config))
            commit_dir(tmp, final)
        acc.wait_for_everyone()
        return final


class _Interval:
    """Sums of step outputs between two log lines (device tensors; read once per log line)."""

    def __init__(self):
        self.raw: dict[str, torch.Tensor] = {}
        self.weighted: dict[str, torch.Tensor] = {}
        self.total = 0
        self.grad_norm = 0
        self.steps = 0
        self.tokens = 0
        self.nonfinite = 0

    def add(self, out: dict) -> None:
        self.tokens = self.tokens + out["tokens"]
        if "nonfinite_terms" in out:
            self.nonfinite += 1
            return
        for k, v in out["raw"].items():
            self.raw[k] = self.raw.get(k, 0) + v
            self.weighted[k] = self.weighted.get(k, 0) + out["weighted"][k]
        self.total = self.total + out["total"]
        self.grad_norm = self.grad_norm + out["grad_norm"].float()
        self.steps += 1

    def summary(self, acc: Accelerator, seconds: float) -> dict[str, float]:
        tokens = acc.reduce(torch.as_tensor(self.tokens, device=acc.device), "sum")
        record: dict[str, float] = {"tokens": int(tokens), "tokens_per_s": float(tokens) / max(seconds, 1e-9)}
        if self.steps:
            n = self.steps
            means = {f"loss/{k}": v / n for k, v in self.raw.items()}
            means.update({f"weighted/{k}": v / n for k, v in self.weighted.items()})
            means["loss/total"] = self.total / n
            means["grad_norm"] = self.grad_norm / n
            keys = list(means)
            stacked = acc.reduce(torch.stack([torch.as_tensor(means[k], device=acc.device).float() for k in keys]),
                                 "mean")
            record.update({k: float(v) for k, v in zip(keys, stacked.tolist())})
        return record
