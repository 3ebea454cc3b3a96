"""The training engine every objective runs through: one readable loop, full checkpoints, resume.

`Engine.step(micro_batches) -> dict` is one optimizer step; `Engine.fit()` is the loop around it
(data order, logging, evaluation, checkpoints). accelerate supplies device placement, mixed
precision (GradScaler for fp16) and DDP; everything else is here, visible.

Every random draw of a step is a pure function of (seed, step): the data order and masks come
from the sampler (kd_core/sampler.py), and the global RNG (dropout, ELECTRA's generator samples)
is reseeded before each micro-batch from its position in the run. So a run resumed from any
checkpoint computes bitwise what the uninterrupted run computes, with dropout on, and no RNG
state needs saving.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from .checkpoint import CorruptCheckpoint, complete_checkpoints, prune_checkpoints, read_checkpoint, write_checkpoint
from .families import family_of
from .files import atomic_dir, atomic_write_text, commit_dir
from .config import check_ranges, dump_config, flatten, out_of_range, to_dict, yaml_load
from .errors import UserError
from .metrics_log import MetricsLog, StepAggregate
from .objective import Objective, weighted_total
from .precision import resolve as resolve_precision
from .optim import build_optimizer, build_scheduler, warmup_steps
from .sampler import MODEL, Collate, GlobalBatchSampler, micro_batch_seed, seeded_loader

EVAL_SEED = 12345  # held-out masks and samples are the same at every evaluation: comparable over time


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
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "no"  # auto: bf16 where native (kd_core/precision.py)
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

    def problems(self) -> list[str]:
        return out_of_range([
            (not self.max_steps >= 1, f"max_steps={self.max_steps}: give 1 or more"),
            (not self.batch_size >= 1, f"batch_size={self.batch_size}: give 1 or more sequences"),
            (not self.micro_batch_size >= 1, f"micro_batch_size={self.micro_batch_size}: give 1 or more"),
            (not self.lr >= 0, f"lr={self.lr}: give a learning rate >= 0"),
            (not self.weight_decay >= 0, f"weight_decay={self.weight_decay}: give 0 or more"),
            (not 0 <= self.adam_beta1 < 1, f"adam_beta1={self.adam_beta1}: give a value in [0, 1)"),
            (not 0 <= self.adam_beta2 < 1, f"adam_beta2={self.adam_beta2}: give a value in [0, 1)"),
            (not self.adam_eps > 0, f"adam_eps={self.adam_eps}: give a value > 0"),
            (not self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps}: give 0 or more"),
            (not 0 <= self.warmup_ratio < 1, f"warmup_ratio={self.warmup_ratio}: give a value in [0, 1)"),
            (not self.max_grad_norm >= 0, f"max_grad_norm={self.max_grad_norm}: give 0 (no clipping) or more"),
            (not self.log_every >= 1, f"log_every={self.log_every}: give 1 or more steps"),
            (not self.eval_every >= 0, f"eval_every={self.eval_every}: give 0 (at the end) or more steps"),
            (not self.eval_batches >= 0, f"eval_batches={self.eval_batches}: give 0 or more"),
            (not self.save_every >= 0, f"save_every={self.save_every}: give 0 (at the end) or more steps"),
            (not self.keep_checkpoints >= 1, f"keep_checkpoints={self.keep_checkpoints}: give 1 or more"),
            (not self.max_consecutive_nonfinite >= 1,
             f"max_consecutive_nonfinite={self.max_consecutive_nonfinite}: give 1 or more"),
            (not self.num_workers >= 0, f"num_workers={self.num_workers}: give 0 or more"),
            (not 0 < self.layerwise_lr_decay <= 1, f"layerwise_lr_decay={self.layerwise_lr_decay}: give a value in (0, 1]"),
        ])


# what --resume may change, to recover from a blow-up (the change is printed and logged)
RECOVERY_KEYS = ("train.lr", "train.max_grad_norm", "train.max_steps")
CHECKPOINT_OBJECTS = ["extras", "optimizer", "scheduler", "scaler"]


class NonFiniteLossError(UserError):
    """Training produced non-finite losses or gradients for too many consecutive steps."""


def count_tokens(batch: dict) -> torch.Tensor:
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    return torch.tensor(batch["input_ids"].numel())


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, current)} for every flattened key whose value differs."""
    a, b = flatten(saved), flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


class Engine:
    """Trains `objective` on `train_rows` with `collate`; writes everything into `output_dir`.

    run_config: the whole resolved config (a dataclass); saved as config.yaml and in checkpoints.
    """

    def __init__(self, train: TrainConfig, objective: Objective,
                 train_rows: Sequence, collate: Collate, output_dir: str | Path, run_config: Any,
                 tokenizer=None, eval_rows: Sequence | None = None, resume: bool = False):
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
        check_ranges(train, "train")  # configs built in Python skip the check that loading does
        self.cfg, self.loss_weights = train, dict(objective.weights)
        self.output_dir = Path(output_dir)
        self.run_config, self.tokenizer = run_config, tokenizer
        self.train_rows, self.eval_rows, self.collate = train_rows, eval_rows, collate
        # accelerate keeps one precision per process; engines run one after another (distil, then fine-tune)
        # may differ, so reset it (the distributed PartialState is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        # cpu=True is what makes accelerate run multi-process CPU (gloo) under torchrun / accelerate launch
        self.precision, why = resolve_precision(train.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=not torch.cuda.is_available())
        acc = self.accelerator
        if self.precision == "fp16" and acc.device.type == "cpu":
            # accelerate would silently train in fp32 here: refuse instead of a no-op flag
            raise UserError("train.mixed_precision=fp16 needs a GPU; on CPU use bf16 or no")
        self.output_dir.mkdir(parents=True, exist_ok=True)

        self.objective = objective
        fused = acc.device.type == "cuda"
        optimizer = build_optimizer(objective, train.lr, train.weight_decay,
                                    (train.adam_beta1, train.adam_beta2), train.adam_eps, fused,
                                    train.layerwise_lr_decay, family_of(objective.student).depth(objective.student.config))
        n_warmup = warmup_steps(train.max_steps, train.warmup_steps, train.warmup_ratio)
        # the scheduler is not prepared by accelerate: it steps once per optimizer step, on every process
        self.scheduler = build_scheduler(optimizer, train.schedule, train.max_steps, n_warmup)
        self.deepspeed = acc.state.deepspeed_plugin is not None
        if self.deepspeed:  # DeepSpeed accumulates and scales by 1/accumulation itself (path not exercised here)
            acc.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=train.micro_batch_size, gradient_accumulation_steps=self.accumulation)
        self.model, self.optimizer = acc.prepare(objective, optimizer)
        if train.teacher_half and objective.teacher is not None and self.precision != "no":
            objective.teacher.to(torch.bfloat16 if self.precision == "bf16" else torch.float16)
        if train.compile:
            for model in (objective.student, objective.teacher):
                if model is not None:
                    model.base_model.compile()

        if acc.is_main_process:
            print(f"engine: {acc.num_processes} process(es) on {acc.device}, precision {self.precision} ({why}), "
                  f"global batch {train.batch_size} = {train.micro_batch_size} x {self.accumulation} accumulation "
                  f"x {acc.num_processes} process(es)")
        self.step_count = 0
        # wall_s: seconds since the engine started, summed over the processes that resumed this run (each up to
        # its last checkpoint: work a crash threw away is not counted)
        self.counts = {"skipped_overflow": 0, "skipped_nonfinite": 0, "consecutive_nonfinite": 0,
                       "tokens_seen": 0, "wall_s": 0.0}
        recovered = self.resume() if resume else None
        self._wall_origin = time.perf_counter() - self.counts["wall_s"]
        if acc.is_main_process:
            print("loss weights: " + ", ".join(f"{k}={w:g}" for k, w in self.loss_weights.items()))
            atomic_write_text(self.output_dir / "config.yaml", self.config_text())
            self.log = MetricsLog(self.output_dir, resume_step=self.step_count if recovered is not None else None)
            self.log.log_config({**to_dict(run_config), "resolved_loss_weights": self.loss_weights},
                                self.config_text(), ["loss/total"] + [f"loss/{k}" for k in self.loss_weights])
            if recovered:
                self.log.log_text("resume/changed", "\n".join(f"{k}: {a} -> {b}" for k, (a, b) in recovered.items()),
                                  self.step_count)

    def config_text(self) -> str:
        """The run's config; the weights the engine applies (derived, e.g. b1 x mse_parts) as a closing comment."""
        weights = ", ".join(f"{k}: {w:g}" for k, w in self.loss_weights.items())
        return dump_config(self.run_config) + f"# resolved loss weights: {{{weights}}}\n"

    @property
    def accumulation(self) -> int:
        return self.cfg.batch_size // (self.cfg.micro_batch_size * self.accelerator.num_processes)

    def _loader(self, rows: Sequence, start_batch: int, shuffle: bool, seed: int):
        acc = self.accelerator
        lengths = rows.lengths() if self.cfg.group_by_length and shuffle else None
        sampler = GlobalBatchSampler(len(rows), self.cfg.batch_size, self.cfg.micro_batch_size,
                                     acc.process_index, acc.num_processes, seed, start_batch, shuffle, lengths)
        return seeded_loader(rows, self.collate, sampler, self.cfg.num_workers, acc.device.type == "cuda")

    # ---- one optimizer step -------------------------------------------------------------------
    def step(self, micro_batches: list[dict]) -> dict[str, Any]:
        """Forward/backward over the micro-batches, then one optimizer step, or a counted skip when the
        loss or the gradient is not finite."""
        acc, n = self.accelerator, len(micro_batches)
        self.model.train()
        raw: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=acc.device)
        tokens = torch.zeros((), device=acc.device, dtype=torch.long)
        for i, batch in enumerate(micro_batches):
            torch.manual_seed(micro_batch_seed(self.cfg.seed, self.step_count, acc.process_index + i * acc.num_processes,
                                               MODEL))
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

        out: dict[str, Any] = {"raw": raw, "weighted": weighted, "total": total, "tokens": tokens}
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        # fp16: the GradScaler owns inf/NaN gradients (it skips and lowers the scale), so clip only after
        # the loss check; otherwise clip first and check loss and gradient norm with one host sync
        scaled = acc.scaler is not None
        grad_norm = None if scaled else acc.clip_grad_norm_(self.objective.parameters(), max_norm)
        finite = torch.isfinite(total)
        if grad_norm is not None:  # None under DeepSpeed, which clips (and checks) inside its own step
            finite = finite & torch.isfinite(torch.as_tensor(grad_norm))
        finite = finite.float()
        if acc.num_processes > 1:
            finite = acc.reduce(finite, "min")
        if not bool(finite):
            self.optimizer.zero_grad(set_to_none=True)
            self.counts["skipped_nonfinite"] += 1
            self.counts["consecutive_nonfinite"] += 1
            bad = sorted(k for k, v in raw.items() if not torch.isfinite(v))
            out["nonfinite_terms"] = bad or (["total"] if not torch.isfinite(total) else ["grad_norm"])
            self.scheduler.step()
            return out
        self.counts["consecutive_nonfinite"] = 0
        out["grad_norm"] = acc.clip_grad_norm_(self.objective.parameters(), max_norm) if scaled else grad_norm
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
        interval = StepAggregate()
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
                    interval, t_last = StepAggregate(), now
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

    def _log(self, interval: StepAggregate, seconds: float, lr: float) -> dict[str, float]:
        record = interval.summary(self.accelerator, seconds)
        record.update(lr=lr, epoch=self._epoch(), loss_scale=self._loss_scale())
        record.update({f"skipped/{k.removeprefix('skipped_')}": v for k, v in self.counts.items()
                       if k.startswith("skipped_")})
        self.counts["tokens_seen"] += record.pop("tokens")
        record["tokens_seen"] = self.counts["tokens_seen"]
        record["wall_s"] = self._wall()
        if self.accelerator.is_main_process:
            self.log.log(self.step_count, record)
        return record

    def _wall(self) -> float:
        self.counts["wall_s"] = round(time.perf_counter() - self._wall_origin, 3)
        return self.counts["wall_s"]

    def _epoch(self) -> float:
        n_batches = len(self.train_rows) // self.cfg.batch_size
        return self.step_count / n_batches

    def _loss_scale(self) -> float:
        scaler = self.accelerator.scaler
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _on_nonfinite(self, terms: list[str]) -> None:
        n, limit = self.counts["consecutive_nonfinite"], self.cfg.max_consecutive_nonfinite
        if self.accelerator.is_main_process:
            tqdm.write(f"step {self.step_count}: non-finite {terms}; step skipped ({n} in a row, limit {limit})")
        if n >= limit:
            stopped = (f"step {self.step_count}: {terms} were non-finite for {n} consecutive steps "
                       f"(train.max_consecutive_nonfinite={limit}).")
            if not (self.cfg.save_at_end or self.cfg.save_every):  # a fine-tuning cell: nothing to resume
                raise NonFiniteLossError(f"{stopped} Lower the learning rate or check the data.")
            # skipped steps change nothing, so these parameters are those after the last applied update
            path = self.save_checkpoint()
            raise NonFiniteLossError(
                f"{stopped} The parameters of step {self.step_count - n} (finite; nothing was applied since) are "
                f"saved in {path}. To continue, check the data or use bf16 instead of fp16, then --resume with e.g. "
                f"--set train.lr=<lower> or train.max_grad_norm=<lower> (--resume accepts changes to "
                f"{', '.join(RECOVERY_KEYS)}).")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean of every loss term over the held-out rows (fixed masks and samples: comparable over time)."""
        acc = self.accelerator
        self.model.eval()
        n_batches = min(self.cfg.eval_batches, len(self.eval_rows) // self.cfg.batch_size)
        if n_batches == 0:
            return {}
        loader = iter(self._loader(self.eval_rows, 0, False, seed=EVAL_SEED))
        torch.manual_seed(EVAL_SEED)
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
        """Student (HF format) + tokenizer, extras, optimizer, scheduler, scaler, data position and
        config, written to a temporary directory and renamed when complete (main process)."""
        acc = self.accelerator
        final = self.output_dir / f"checkpoint-{self.step_count}"
        if acc.is_main_process:
            broken = [k for k, v in self.objective.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
            if broken:  # never store a NaN model as a state to resume from
                raise RuntimeError(f"step {self.step_count}: non-finite values in {broken[:5]}; checkpoint not written")
            objects = {"extras": self.objective.extras_state_dict(), "optimizer": self.optimizer.state_dict(),
                       "scheduler": self.scheduler.state_dict()}
            if acc.scaler is not None:
                objects["scaler"] = acc.scaler.state_dict()
            self._wall()
            state = {"step": self.step_count, "epoch": self._epoch(), "data_position": self.step_count,
                     "world_size": acc.num_processes, **self.counts}
            write_checkpoint(final, self.objective.student, self.tokenizer, objects, self.config_text(), state)
            prune_checkpoints(self.output_dir, self.cfg.keep_checkpoints, self.step_count)
        acc.wait_for_everyone()
        return final

    def resume(self) -> dict[str, tuple[Any, Any]] | None:
        """Load the newest checkpoint that reads back, falling back past broken ones (each named).
        Returns the recovery changes applied (empty if none), or None when there was nothing to resume."""
        acc = self.accelerator
        found = [path for _, path in reversed(complete_checkpoints(self.output_dir))]
        if not found:
            if acc.is_main_process:
                print(f"--resume: no complete checkpoint in {self.output_dir}; starting from scratch")
            return None
        broken = []
        for path in found:
            try:
                checkpoint = read_checkpoint(path, type(self.objective.student), CHECKPOINT_OBJECTS)
            except CorruptCheckpoint as e:
                broken.append(str(e))
                if acc.is_main_process:
                    print(f"warning: --resume skips a broken checkpoint: {e}")
                continue
            changes = self._check_config(checkpoint.path, yaml_load(checkpoint.config_yaml))
            self._apply(checkpoint, changes)
            if acc.is_main_process:
                print(f"resumed from {path} at step {self.step_count}"
                      + "".join(f"; {k}: {a} -> {b}" for k, (a, b) in changes.items()))
            return changes
        raise UserError(f"--resume: no checkpoint in {self.output_dir} reads back ({'; '.join(broken)}); "
                        "start again in a new --output-dir (or with --overwrite)")

    def _check_config(self, path: Path, saved: dict) -> dict[str, tuple[Any, Any]]:
        """Resuming under a different config would silently mix two runs; only the recovery keys may change."""
        changes = config_changes(saved, to_dict(self.run_config))
        refused = sorted(k for k in changes if k not in RECOVERY_KEYS)
        if refused:
            raise UserError(f"--resume: the config differs from the checkpoint's in {refused} ({path / 'config.yaml'}); "
                            f"resume with the saved config (only {', '.join(RECOVERY_KEYS)} may change) "
                            "or use a new --output-dir")
        return changes

    def _apply(self, checkpoint, changes: dict[str, tuple[Any, Any]]) -> None:
        configured_lrs = list(self.scheduler.base_lrs)
        self.objective.student.load_state_dict(checkpoint.student)
        missing, unexpected = self.objective.load_state_dict(checkpoint.objects["extras"], strict=False)
        missing = [k for k in missing if not k.startswith(("student.", "teacher."))]
        if missing or unexpected:
            raise UserError(f"checkpoint {checkpoint.path}: extras do not match the objective "
                            f"(missing {missing}, unexpected {list(unexpected)}); resume with the config it was saved with")
        self.optimizer.load_state_dict(checkpoint.objects["optimizer"])
        self.scheduler.load_state_dict(checkpoint.objects["scheduler"])
        if self.accelerator.scaler is not None and "scaler" in checkpoint.objects:
            self.accelerator.scaler.load_state_dict(checkpoint.objects["scaler"])
        if "train.lr" in changes:  # a new peak lr (per group, as the fresh optimizer set it): same schedule
            self.scheduler.base_lrs = configured_lrs
        if changes:  # the schedule's lambdas come from the current config (a new max_steps moves the decay)
            for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
                group["initial_lr"] = base
                group["lr"] = base * fn(self.scheduler.last_epoch)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        state = checkpoint.state
        self.step_count = state["step"]
        self.counts.update({k: state[k] for k in self.counts if k in state})
        self.counts["consecutive_nonfinite"] = 0  # a resume is a fresh chance, whatever stopped the run

    def save_final(self) -> Path:
        """`final/`: the student in HF format with its tokenizer, loadable by from_pretrained."""
        acc = self.accelerator
        final = self.output_dir / "final"
        if acc.is_main_process:
            tmp = atomic_dir(final)
            self.objective.student.save_pretrained(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            (tmp / "config.yaml").write_text(self.config_text())
            commit_dir(tmp, final)
        acc.wait_for_everyone()
        return final
