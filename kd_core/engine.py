"""The training engine every objective runs through: one readable loop, full checkpoints, resume.

`Engine.step(micro_batches) -> dict` is one optimizer step; `Engine.fit()` is the loop around it
(data order, logging, evaluation, checkpoints, a clean stop on SIGTERM/SIGINT). accelerate supplies
device placement, mixed precision (GradScaler for fp16), DDP and DeepSpeed ZeRO-2; everything else is
here, visible.

Every random draw of a step is a pure function of (seed, step): the data order and masks come
from the sampler (kd_core/sampler.py), and the global RNG (dropout, ELECTRA's generator samples)
is reseeded before each micro-batch from its position in the run. So a run resumed from any
checkpoint computes bitwise what the uninterrupted run computes, with dropout on, and no RNG
state needs saving.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import GradientAccumulationPlugin
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from .checkpoint import (CorruptCheckpoint, complete_checkpoints, progress_without_checkpoint, prune_checkpoints,
                         read_checkpoint, set_aside, write_checkpoint, write_shard)
from .distributed import accelerator_cpu_flag, agree, deepspeed_requested, gather, process_state
from .families import family_of
from .files import atomic_dir, atomic_write_text, commit_dir, staging_dir
from .config import ConfigError, check_ranges, dump_config, flatten, out_of_range, to_dict, yaml_load
from .errors import Preempted, SharedError, UserError
from .metrics_log import MetricsLog, StepAggregate
from .objective import Objective, weighted_total
from .precision import resolve as resolve_precision
from .optim import build_optimizer, build_scheduler, warmup_steps
from .preemption import StopSignals
from .sampler import MODEL, Collate, GlobalBatchSampler, check_batch_split, micro_batch_seed, seeded_loader

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
                 tokenizer=None, eval_rows: Sequence | None = None, resume: bool = False,
                 inputs: dict[str, str] | None = None):
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
        check_ranges(train, "train")  # configs built in Python skip the check that loading does
        self.cfg, self.loss_weights = train, dict(objective.weights)
        self.output_dir = Path(output_dir)
        self.run_config, self.tokenizer = run_config, tokenizer
        self.train_rows, self.eval_rows, self.collate = train_rows, eval_rows, collate
        self.inputs = dict(inputs or {})  # {config key: content hash} of the run's inputs (teacher, corpus, ...)
        # accelerate keeps one precision per process; engines run one after another (distil, then fine-tune)
        # may differ, so reset it (the distributed PartialState is kept)
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        world = process_state().num_processes
        check_batch_split(train.batch_size, train.micro_batch_size, world)
        self.precision, why = resolve_precision(train.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
        launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launcher not in ("no", self.precision):  # accelerate would take the run config's, silently
            raise ConfigError(f"accelerate launch --mixed_precision {launcher} (or its config file) and "
                              f"train.mixed_precision={train.mixed_precision} ({self.precision} here) differ: the run's "
                              f"precision is train.mixed_precision; use --set train.mixed_precision={launcher}")
        # under DeepSpeed, accumulation is DeepSpeed's (it scales the loss and steps at the last micro-batch);
        # the plugin also keeps accelerate from reading a launcher's value from the environment
        steps = self._accumulation(world) if deepspeed_requested() else 1
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=accelerator_cpu_flag(),
                                       gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=steps))
        acc = self.accelerator
        if self.precision == "fp16" and acc.device.type == "cpu":
            # accelerate would silently train in fp32 here: refuse instead of a no-op flag
            raise ConfigError("train.mixed_precision=fp16 needs a GPU; on CPU use bf16 or no")
        self.deepspeed = acc.state.deepspeed_plugin is not None
        if self.deepspeed:
            self._configure_deepspeed(acc.state.deepspeed_plugin)
        self.output_dir.mkdir(parents=True, exist_ok=True)

        self.objective = objective
        fused = acc.device.type == "cuda"
        optimizer = build_optimizer(objective, train.lr, train.weight_decay,
                                    (train.adam_beta1, train.adam_beta2), train.adam_eps, fused,
                                    train.layerwise_lr_decay, family_of(objective.student).depth(objective.student.config))
        n_warmup = warmup_steps(train.max_steps, train.warmup_steps, train.warmup_ratio)
        # the scheduler is not prepared by accelerate: it steps once per optimizer step, on every process
        self.scheduler = build_scheduler(optimizer, train.schedule, train.max_steps, n_warmup)
        # DeepSpeed casts the modules to bf16/fp16 and keeps fp32 master copies of trainable parameters only
        self._frozen_fp32 = {id(p): p.detach().float().clone() for name, p in objective.named_parameters()
                             if self.deepspeed and not p.requires_grad and not name.startswith("teacher.")}
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
        if eval_rows is not None and acc.is_main_process and len(eval_rows) < train.batch_size:
            batch, _ = self._eval_shape(len(eval_rows))
            print(f"note: the held-out split has {len(eval_rows)} rows, fewer than one global batch "
                  f"({train.batch_size}): " + (f"evaluated in batches of {batch}" if batch else
                                                "too few for the processes; no eval/loss will be logged"))
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
        return self._accumulation(self.accelerator.num_processes)

    def _accumulation(self, world: int) -> int:
        return self.cfg.batch_size // (self.cfg.micro_batch_size * world)

    def _configure_deepspeed(self, plugin) -> None:
        """The DeepSpeed config follows the run config: micro-batch, accumulation and clipping come from `train`
        (a clipping value of its own would make train.max_grad_norm, and its --resume recovery, a lie)."""
        if plugin.zero_stage not in (1, 2):
            raise ConfigError(f"DeepSpeed ZeRO stage {plugin.zero_stage} is not supported (checkpoints and final/ "
                              "need whole parameters on every process); use zero_stage 1 or 2")
        ours = {"gradient_clipping": (self.cfg.max_grad_norm, "train.max_grad_norm"),
                "train_micro_batch_size_per_gpu": (self.cfg.micro_batch_size, "train.micro_batch_size"),
                "gradient_accumulation_steps": (self._accumulation(process_state().num_processes),
                                                "train.batch_size / (micro_batch_size x processes)")}
        ds = plugin.deepspeed_config
        for key, (value, source) in ours.items():
            if ds.get(key, "auto") not in ("auto", value):
                raise ConfigError(f"the DeepSpeed config sets {key}={ds[key]} but the run's is {value} ({source}); "
                                  f"remove {key} from the accelerate/DeepSpeed config (or set it to auto)")
            ds[key] = value

    def _loader(self, rows: Sequence, start_batch: int, shuffle: bool, seed: int,
                shape: tuple[int, int] | None = None):
        acc = self.accelerator
        batch, micro = shape or (self.cfg.batch_size, self.cfg.micro_batch_size)
        lengths = rows.lengths() if self.cfg.group_by_length and shuffle else None
        sampler = GlobalBatchSampler(len(rows), batch, micro,
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
            last = i == n - 1
            acc.sync_gradients = last  # DeepSpeed: only the last micro-batch is an accumulation boundary (its step)
            sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
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
        # under DeepSpeed this is the norm its own step (at the last backward) computed and clipped with: a float
        grad_norm = None if scaled else self._norm(acc.clip_grad_norm_(self.objective.parameters(), max_norm))
        finite = torch.isfinite(total)
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm)
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
        out["grad_norm"] = self._norm(acc.clip_grad_norm_(self.objective.parameters(), max_norm)) if scaled else grad_norm
        scale_before = self._loss_scale()
        self.optimizer.step()
        # fp16 overflow: the GradScaler skipped the update and lowered the scale. (accelerate's
        # optimizer_step_was_skipped misses this with fused AdamW, which skips inside its kernel.)
        if self._loss_scale() < scale_before:
            self.counts["skipped_overflow"] += 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def _norm(self, value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device)

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        acc, cfg = self.accelerator, self.cfg
        loader = iter(self._loader(self.train_rows, self.step_count, True, cfg.seed))
        bar = tqdm(total=cfg.max_steps, initial=self.step_count, disable=not acc.is_main_process,
                   desc="train", dynamic_ncols=True)
        interval = StepAggregate()
        last_logged: dict[str, float] = {}
        t_last = time.perf_counter()
        # a run that can be resumed stops on SIGTERM/SIGINT at the end of a step, with a checkpoint
        signals = StopSignals() if self._resumable else None
        start = self.step_count
        try:
            with signals or contextlib.nullcontext():
                while self.step_count < cfg.max_steps:
                    micro = [next(loader) for _ in range(self.accumulation)]
                    lr = self.scheduler.get_last_lr()[0]
                    out = self.step(micro)
                    self.step_count += 1
                    interval.add(out)
                    if "nonfinite_terms" in out:
                        self._on_nonfinite(out["nonfinite_terms"])
                    stop = signals is not None and signals.agreed(acc) and self.step_count < cfg.max_steps
                    if self.step_count % cfg.log_every == 0 or self.step_count == cfg.max_steps or stop:
                        now = time.perf_counter()
                        last_logged = self._log(interval, now - t_last, lr)
                        bar.set_postfix(loss=f"{last_logged.get('loss/total', float('nan')):.4g}",
                                        tok_s=f"{last_logged['tokens_per_s']:.0f}")
                        interval, t_last = StepAggregate(), now
                    if self.eval_rows is not None and cfg.eval_every and self.step_count % cfg.eval_every == 0:
                        last_logged.update(self.evaluate())
                    if stop or cfg.save_every and self.step_count % cfg.save_every == 0 and self.step_count < cfg.max_steps:
                        path = self.save_checkpoint()
                    if stop:
                        self._stop(signals.received, path)
                    bar.update(1)
        finally:
            bar.close()
        ran = self.step_count > start  # a finished run resumed trains nothing: its eval row and checkpoint stand
        if not ran and acc.is_main_process:
            print(f"the run had already finished at step {self.step_count}; nothing to train")
        if ran and self.eval_rows is not None and not (cfg.eval_every and self.step_count % cfg.eval_every == 0):
            last_logged.update(self.evaluate())
        if cfg.save_at_end:
            if ran:
                self.save_checkpoint()
            self.save_final()
        if acc.is_main_process:
            self.log.close()
        return last_logged

    @property
    def _resumable(self) -> bool:
        return bool(self.cfg.save_at_end or self.cfg.save_every)  # a fine-tuning cell saves nothing to resume

    def _stop(self, received: str | None, path: Path) -> None:
        if self.accelerator.is_main_process:
            self.log.close()
        raise Preempted(f"{received or 'a stop signal (to another process)'} at step {self.step_count} of "
                        f"{self.cfg.max_steps}: the step finished and {path} was saved; to continue, run the same "
                        "command with --resume")

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
            if not self._resumable:
                raise NonFiniteLossError(f"{stopped} Lower the learning rate or check the data.")
            # skipped steps change nothing, so these parameters are those after the last applied update; but that
            # update may itself have broken the model (finite, yet every forward non-finite): look before saving
            kept = f"The parameters of step {self.step_count - n} (nothing was applied since)"
            how = (f"--resume with e.g. --set train.lr=<lower> or train.max_grad_norm=<lower> (--resume accepts "
                   f"changes to {', '.join(RECOVERY_KEYS)})")
            where, loss = self._probe()
            if math.isfinite(loss):
                path = self.save_checkpoint()
                raise NonFiniteLossError(
                    f"{stopped} {kept} evaluate finite ({where} loss {loss:.4g}) and are saved in {path}. To continue, "
                    f"check the data or use bf16 instead of fp16, then {how}.")
            good, moved = self._newest_finite_checkpoint()
            aside = f" (checkpoints that do not evaluate finite were renamed: {', '.join(moved)})" if moved else ""
            if good is None:
                raise NonFiniteLossError(
                    f"{stopped} {kept} do not evaluate finite ({where} loss {loss:.4g}) and were not saved, and no "
                    f"checkpoint of this run does{aside}: nothing to resume. Start again with --overwrite and a lower "
                    "train.lr (or train.max_grad_norm), or check the data.")
            raise NonFiniteLossError(
                f"{stopped} {kept} do not evaluate finite ({where} loss {loss:.4g}) and were not saved; the newest "
                f"checkpoint that does is {good[0]} ({where} loss {good[1]:.4g}){aside}. To continue from it, {how}.")

    def _probe(self) -> tuple[str, float]:
        """("held-out" or "training", mean total loss of the current parameters on the fixed held-out batches, or
        on the first training rows when there is no held-out split)."""
        rows, where = (self.eval_rows, "held-out") if self.eval_rows is not None else (self.train_rows, "training")
        return where, self._mean_losses(rows, max(1, self.cfg.eval_batches)).get("total", math.nan)

    def _newest_finite_checkpoint(self) -> tuple[tuple[Path, float] | None, list[str]]:
        """The newest checkpoint of this run whose parameters evaluate finite (loaded into the live objective: the
        run is ending) and its loss; newer ones that do not are renamed `<name>.nonfinite` (kept, but never resumed)."""
        moved = []
        for step, path in reversed(complete_checkpoints(self.output_dir)):
            if step > self.step_count:
                continue
            try:
                checkpoint = read_checkpoint(path, type(self.objective.student), ["extras"])
            except CorruptCheckpoint:
                continue
            self.objective.student.load_state_dict(checkpoint.student)
            self.objective.load_state_dict(checkpoint.objects["extras"], strict=False)
            _, loss = self._probe()
            if math.isfinite(loss):
                return (path, loss), moved
            if self.accelerator.is_main_process:
                moved.append(set_aside(path, "nonfinite").name)
            self.accelerator.wait_for_everyone()
        return None, moved

    def _eval_shape(self, n_rows: int) -> tuple[int, int]:
        """(global batch, micro-batch) for held-out rows: the training ones, or smaller when the split holds fewer
        rows than one global batch (0, 0: fewer rows than processes)."""
        cfg, world = self.cfg, self.accelerator.num_processes
        if n_rows >= cfg.batch_size:
            return cfg.batch_size, cfg.micro_batch_size
        micro = min(cfg.micro_batch_size, n_rows // world)
        return (micro * world * min(self.accumulation, n_rows // max(micro * world, 1)), micro) if micro else (0, 0)

    def evaluate(self) -> dict[str, float]:
        """Mean of every loss term over the held-out rows (fixed masks and samples: comparable over time)."""
        means = self._mean_losses(self.eval_rows, self.cfg.eval_batches)
        record = {f"eval/loss/{k}": v for k, v in means.items()}
        if record and self.accelerator.is_main_process:
            self.log.log(self.step_count, record)
        return record

    @torch.no_grad()
    def _mean_losses(self, rows: Sequence, max_batches: int) -> dict[str, float]:
        """{term: mean} over up to `max_batches` global batches of `rows` in order, with fixed masks and samples."""
        acc = self.accelerator
        global_batch, micro = self._eval_shape(len(rows))
        n_batches = min(max_batches, len(rows) // global_batch) if global_batch else 0
        if n_batches == 0:
            return {}
        self.model.eval()
        loader = iter(self._loader(rows, 0, False, seed=EVAL_SEED, shape=(global_batch, micro)))
        sums: dict[str, torch.Tensor] = {}
        count = 0
        per_process = global_batch // (micro * acc.num_processes)
        for b, i in itertools.product(range(n_batches), range(per_process)):
            # seeded per micro-batch as in training, so the result does not depend on the process count
            torch.manual_seed(micro_batch_seed(EVAL_SEED, b, acc.process_index + i * acc.num_processes, MODEL))
            batch = {k: v.to(acc.device) for k, v in next(loader).items()}
            terms = self.model(batch)
            total, _ = weighted_total(terms, self.loss_weights)
            for k, v in {**terms, "total": total}.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            count += 1
        self.model.train()
        return {k: float(acc.reduce(v / count, "mean")) for k, v in sums.items()}

    # ---- checkpoints --------------------------------------------------------------------------
    def _master_weights(self) -> dict[int, torch.Tensor]:
        """Under DeepSpeed, the fp32 value of every parameter saved (by id): ZeRO partitions the fp32 master copies
        over the processes (so every process must call this) and, with bf16/fp16, the modules hold 16-bit copies.
        Without DeepSpeed: empty (the modules hold the values)."""
        if not self.deepspeed:
            return {}
        from deepspeed.utils import safe_get_full_fp32_param

        trainable = {id(p): safe_get_full_fp32_param(p).cpu() for p in self.objective.parameters() if p.requires_grad}
        return {**self._frozen_fp32, **trainable}

    @staticmethod
    def _state_of(module: torch.nn.Module, master: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: master.get(id(v), v.detach()) for k, v in module.state_dict(keep_vars=True).items()}

    def save_checkpoint(self) -> Path:
        """Student (HF format) + tokenizer, extras, optimizer, scheduler, scaler, data position and
        config, written to a temporary directory and renamed when complete (main process). Under DeepSpeed
        every process first writes its ZeRO partition of the optimizer state into that directory."""
        acc = self.accelerator
        final = self.output_dir / f"checkpoint-{self.step_count}"
        master = self._master_weights()
        weights = self._state_of(self.objective, master)
        if acc.is_main_process:
            student_state = self._state_of(self.objective.student, master)  # not the teacher
            saved = {**student_state, **self.objective.extras_state_dict(weights)}
            broken = [k for k, v in saved.items() if v.is_floating_point() and not v.isfinite().all()]
            if broken:  # never store a NaN model as a state to resume from
                raise RuntimeError(f"step {self.step_count}: non-finite values in {broken[:5]}; checkpoint not written")
            atomic_dir(final)
        acc.wait_for_everyone()
        if self.deepspeed:
            write_shard(staging_dir(final), "optimizer", acc.process_index, self.optimizer.state_dict())
            acc.wait_for_everyone()
        if acc.is_main_process:
            objects = {"extras": self.objective.extras_state_dict(weights), "scheduler": self.scheduler.state_dict()}
            if not self.deepspeed:
                objects["optimizer"] = self.optimizer.state_dict()
            if acc.scaler is not None:
                objects["scaler"] = acc.scaler.state_dict()
            self._wall()
            state = {"step": self.step_count, "epoch": self._epoch(), "data_position": self.step_count,
                     "world_size": acc.num_processes, **self.counts, "inputs": self.inputs}
            student = self.objective.student
            write_checkpoint(staging_dir(final), final, student, self.tokenizer, objects, self.config_text(), state,
                             student_state if master else None)
            prune_checkpoints(self.output_dir, self.cfg.keep_checkpoints, self.step_count)
        acc.wait_for_everyone()
        return final

    def resume(self) -> dict[str, tuple[Any, Any]] | None:
        """Load the newest checkpoint that reads back on every process, falling back past broken ones (each named).
        Returns the recovery changes applied (empty if none), or None when there was nothing to resume."""
        acc = self.accelerator
        found = complete_checkpoints(self.output_dir)
        agree([step for step, _ in found], f"--resume: the processes see different checkpoints in {self.output_dir}; "
                                           "it must be on a filesystem shared by all nodes")
        if not found:
            first_save = self.cfg.save_every or self.cfg.max_steps
            if progress := progress_without_checkpoint(self.output_dir, first_save):
                raise UserError(f"--resume: {self.output_dir} holds a run ({'; '.join(progress)}) but no complete "
                                "checkpoint (checkpoint-<step>/ with trainer_state.json) to continue from; restore its "
                                "checkpoint, or start again with --overwrite (or in a new --output-dir)")
            if acc.is_main_process:
                print(f"--resume: no complete checkpoint in {self.output_dir}; starting from scratch")
            return None
        broken = []
        for _, path in reversed(found):
            try:
                checkpoint, error = read_checkpoint(path, type(self.objective.student), CHECKPOINT_OBJECTS,
                                                    acc.process_index), None
            except CorruptCheckpoint as e:
                checkpoint, error = None, str(e)
            errors = list(dict.fromkeys(e for e in gather(error) if e is not None))
            if errors:  # all processes fall back together, whichever could not read its part
                broken += errors
                if acc.is_main_process:
                    for e in errors:
                        print(f"warning: --resume skips a broken checkpoint: {e}")
                continue
            self._check_layout(checkpoint)
            changes = self._check_config(checkpoint.path, yaml_load(checkpoint.config_yaml),
                                         checkpoint.state.get("inputs", {}))
            unused = sorted(k for k in changes if k in RECOVERY_KEYS and k != "train.max_steps")
            if checkpoint.state["step"] >= self.cfg.max_steps and unused:
                # config.yaml would record settings that trained nothing
                raise UserError(f"--resume: the run finished at step {checkpoint.state['step']}, so {unused} would "
                                "change nothing that was trained; resume it as it was saved (or raise "
                                "train.max_steps to train on), or use a new --output-dir")
            self._apply(checkpoint, changes)
            if acc.is_main_process:
                print(f"resumed from {path} at step {self.step_count}"
                      + "".join(f"; {k}: {a} -> {b}" for k, (a, b) in changes.items()))
            return changes
        raise SharedError(f"--resume: no checkpoint in {self.output_dir} reads back ({'; '.join(broken)}); "
                          "start again in a new --output-dir (or with --overwrite)")

    def _check_layout(self, checkpoint) -> None:
        """A ZeRO optimizer shard fits only DeepSpeed with the process count that wrote it."""
        saved = checkpoint.state["world_size"]
        sharded = "optimizer.pt" not in checkpoint.state["files"]
        if sharded != self.deepspeed or (sharded and saved != self.accelerator.num_processes):
            written = f"by DeepSpeed ZeRO on {saved} processes (one optimizer shard each)" if sharded else "without DeepSpeed"
            raise SharedError(f"--resume: {checkpoint.path} was written {written}; resume it the same way "
                              f"({f'DeepSpeed, {saved} processes' if sharded else 'without DeepSpeed, any process count'})")

    def _check_config(self, path: Path, saved: dict, saved_inputs: dict[str, str]) -> dict[str, tuple[Any, Any]]:
        """Resuming under a different config would silently mix two runs; only the recovery keys may change, and
        the path of an input (teacher, corpus) whose content is the same (it was moved). An input whose content
        changed under the same path is refused too."""
        changes = config_changes(saved, to_dict(self.run_config))
        differ = sorted(k for k, digest in saved_inputs.items() if self.inputs.get(k) != digest)
        if differ:
            current = flatten(to_dict(self.run_config))
            raise UserError(f"--resume: the checkpoint {path} was trained on other inputs: "
                            + "; ".join(f"{k} {current.get(k)} holds other content than {flatten(saved).get(k)} did"
                                        for k in differ)
                            + " (a model compared by its config and weights, a corpus by its sha256); give the inputs "
                            "it was trained on, or use a new --output-dir")
        refused = sorted(k for k in changes if k not in RECOVERY_KEYS and k not in saved_inputs)
        if refused:
            raise SharedError(f"--resume: the config differs from the checkpoint's in {refused} ({path / 'config.yaml'}); "
                            f"resume with the saved config (only {', '.join(RECOVERY_KEYS)} may change) "
                            "or use a new --output-dir")
        return changes

    def _apply(self, checkpoint, changes: dict[str, tuple[Any, Any]]) -> None:
        configured_lrs = list(self.scheduler.base_lrs)
        self.objective.student.load_state_dict(checkpoint.student)
        missing, unexpected = self.objective.load_state_dict(checkpoint.objects["extras"], strict=False)
        missing = [k for k in missing if not k.startswith(("student.", "teacher."))]
        if missing or unexpected:
            raise SharedError(f"checkpoint {checkpoint.path}: extras do not match the objective "
                            f"(missing {missing}, unexpected {list(unexpected)}); resume with the config it was saved with")
        if self.deepspeed:  # this process's ZeRO partition (DeepSpeed indexes the list by rank), fp32 master included
            shards = [None] * self.accelerator.num_processes
            shards[self.accelerator.process_index] = checkpoint.objects["optimizer"]
            zero = self.optimizer.optimizer
            zero.load_state_dict(shards, load_from_fp32_weights=True)
            zero.clip_grad = self.cfg.max_grad_norm  # the saved value would undo a --resume recovery
        else:
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
        return self.save_pretrained(self.objective.student, self.output_dir / "final", self.config_text())

    def save_pretrained(self, module: torch.nn.Module, path: Path, config_text: str | None = None) -> Path:
        """`module` (a part of the objective) in HF format with the tokenizer, from the fp32 master weights under
        DeepSpeed; every process calls it."""
        acc = self.accelerator
        master = self._master_weights()
        if acc.is_main_process:
            tmp = atomic_dir(path)
            module.save_pretrained(tmp, state_dict=self._state_of(module, master) if master else None)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            if config_text is not None:
                (tmp / "config.yaml").write_text(config_text)
            commit_dir(tmp, path)
        acc.wait_for_everyone()
        return path
