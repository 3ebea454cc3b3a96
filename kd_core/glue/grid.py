"""A resumable grid over learning rates x batch sizes x seeds, model selection on dev, and the report.

Each (task, cell, seed) writes `<out>/<task>/lr<lr>_bs<bs>/seed<k>/result.json` when it finishes;
a rerun loads finished ones instead of training them again. The chosen cell is the one with the
best median primary metric over seeds; its every metric is reported per seed, with median, mean,
standard deviation, min and max.

A run that diverges (non-finite training loss, predictions or dev score) is recorded as failed in its
result.json, so a rerun loads it rather than retrying it forever (delete the file to retry). Each result.json
records the settings that produced it (model, GLUE folder, fine-tuning config, task teacher); loading one made with
other settings is an error naming the difference, never a silent reuse. A cell's
metrics are over its finite seeds, with n_failed; in selection a failed seed counts as the worst
score, so an unstable cell cannot win on its lucky seeds. A cell with no finite seed is never chosen;
a task with no such cell is reported as failed, without a score, and the GLUE macro is not computed.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import flatten
from ..files import atomic_write_text
from ..engine import NonFiniteLossError
from ..errors import UserError, one_line
from .distill import TaskDistillConfig, distill_and_evaluate
from .finetune import FinetuneConfig, check_model, check_positions, finetune_and_evaluate, load_examples
from .metrics import DivergedError, glue_macro
from .report import failure_note, markdown_table
from .tasks import TASKS, Task

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class GridConfig:
    lrs: list[float] = field(default_factory=lambda: [1e-5, 5e-5, 1e-4])  # the Greek report's grid
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32])
    seeds: int = 3
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    teacher: str | None = None  # a model fine-tuned on the task: distil it instead of plain fine-tuning
    distill: TaskDistillConfig = field(default_factory=TaskDistillConfig)


def cell_name(lr: float, batch_size: int) -> str:
    return f"lr{lr:g}_bs{batch_size}"


def check_grid(grid: GridConfig) -> None:
    """Reject a grid that would train nothing or fail inside the engine, before any run starts."""
    problems = []
    if grid.seeds < 1:
        problems.append(f"seeds is {grid.seeds}, give 1 or more (--seeds)")
    if not grid.lrs or not all(math.isfinite(lr) and lr > 0 for lr in grid.lrs):
        problems.append(f"learning rates {grid.lrs} must be one or more positive numbers (--lrs 1e-5,5e-5)")
    if not grid.batch_sizes or min(grid.batch_sizes) < 1:
        problems.append(f"batch sizes {grid.batch_sizes} must be one or more positive integers (--batch-sizes 16,32)")
    if not (math.isfinite(grid.finetune.epochs) and grid.finetune.epochs > 0):
        problems.append(f"epochs is {grid.finetune.epochs}, give a positive number (--epochs)")
    for task, epochs in grid.finetune.task_epochs.items():
        if task not in TASKS:
            problems.append(f"task_epochs names '{task}', not a GLUE task ({', '.join(TASKS)})")
        if not (math.isfinite(epochs) and epochs > 0):
            problems.append(f"task_epochs.{task} is {epochs}, give a positive number")
    if grid.finetune.max_len < 1:
        problems.append(f"max_len is {grid.finetune.max_len}, give a positive number (--max-len)")
    if grid.finetune.max_train_examples < 0:
        problems.append(f"max_train_examples is {grid.finetune.max_train_examples}, give 0 (all) or more")
    if problems:
        raise UserError("bad grid: " + "; ".join(problems))


def preflight(model: str, tasks: list[Task], glue_dir: str | None, grid: GridConfig) -> dict:
    """What a grid can get wrong, checked before its first run rather than hours in: the grid, the models,
    every task's files and lengths. Returns the examples, keyed (task, split), for the runs to share."""
    check_grid(grid)
    if not tasks:
        raise UserError("no GLUE task given; name them with --tasks, e.g. --tasks rte,mrpc")
    models = {t.name: [model] + ([teacher_for(grid.teacher, t)] if grid.teacher else []) for t in tasks}
    for path in dict.fromkeys(p for paths in models.values() for p in paths):
        check_model(path)
    cache: dict = {}
    for task in tasks:
        load_examples(task, glue_dir, cache)
        n_train = len(cache[(task.name, "train")])
        if grid.finetune.max_train_examples:
            n_train = min(n_train, grid.finetune.max_train_examples)
        if n_train < max(grid.batch_sizes):  # the engine needs one full batch
            raise UserError(f"task {task.name}: {n_train} training examples, fewer than one batch of "
                            f"{max(grid.batch_sizes)}; lower --batch-sizes or raise --max-train-examples")
        examples = [e for split in ("train", *task.dev_splits) for e in cache[(task.name, split)]]
        for path in models[task.name]:
            check_positions(path, grid.finetune.max_len, examples)
    return cache


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def failed(run: dict) -> bool:
    """A diverged run, or one recorded before divergence was detected (a non-finite dev metric)."""
    return run.get("status", "ok") != "ok" or not all(map(math.isfinite, run["metrics"].values()))


def summarise_cell(task: Task, runs: list[dict]) -> dict:
    """Spreads over the finite runs; the failed ones are listed (seed, error). No finite run: no metrics."""
    ok = [r for r in runs if not failed(r)]
    failures = [{"seed": r["seed"], "error": r.get("error", "non-finite dev metrics")} for r in runs if failed(r)]
    summary = {"runs": runs, "n_failed": len(failures), "failed": failures}
    if not ok:
        return {**summary, "metrics": None, "combined": None, "primary_median": None}
    metrics = {m: spread([r["metrics"][m] for r in ok]) for m in ok[0]["metrics"]}
    return {**summary, "metrics": metrics, "combined": spread([r["combined"] for r in ok]),
            "primary_median": metrics[task.primary]["median"]}


def choose_cell(task: Task, cells: dict[str, dict]) -> str | None:
    """The cell with the best median primary score, a failed seed counting as the worst score (ties: the
    median over finite seeds); None when no cell has a finite run."""
    def rank(name: str) -> tuple[float, float]:
        cell = cells[name]
        scores = [r["metrics"][task.primary] for r in cell["runs"] if not failed(r)]
        return statistics.median(scores + [-math.inf] * cell["n_failed"]), cell["primary_median"]

    candidates = [name for name, cell in cells.items() if cell["metrics"] is not None]
    return max(candidates, key=rank) if candidates else None


def teacher_for(teacher: str, task: Task) -> str:
    """A teacher per task: `{task}` in the path is replaced by the task name (e.g. runs/teacher/{task})."""
    return teacher.replace("{task}", task.name)


def run_one(model: str, task: Task, glue_dir: str | None, grid: GridConfig, cfg: FinetuneConfig, seed: int,
            run_dir: Path, cache: dict) -> dict:
    """One seed of one cell; a diverged run is a result too (status "diverged" and the one-line error)."""
    t0 = time.perf_counter()
    try:
        if grid.teacher:
            result = distill_and_evaluate(model, teacher_for(grid.teacher, task), task, glue_dir, cfg, grid.distill,
                                          seed, run_dir, cache)
        else:
            result = finetune_and_evaluate(model, task, glue_dir, cfg, seed, run_dir, cache)
    except (NonFiniteLossError, DivergedError) as e:  # the same seed and lr would diverge again: record, go on
        return {"status": "diverged", "error": one_line(e), "seed": seed,
                "wall_s": round(time.perf_counter() - t0, 1)}
    return {"status": "ok", **result}


def describe(result: dict) -> str:
    """The tail of a run's log line: its metrics, or why it failed."""
    if failed(result):
        return f"diverged: {result.get('error', 'non-finite dev metrics')}"
    return ", ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items()) + f" ({result['wall_s']} s)"


def run_settings(model: str, task: Task, glue_dir: str | None, grid: GridConfig, cfg: FinetuneConfig) -> dict:
    """What a finished run's result depends on, as JSON would store it (local paths resolved)."""
    def where(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path and Path(path).exists() else path

    teacher = {"teacher": where(teacher_for(grid.teacher, task)), "distill": asdict(grid.distill)} if grid.teacher else {}
    return json.loads(json.dumps({"model": where(model), "glue_dir": where(glue_dir), "finetune": asdict(cfg), **teacher}))


def check_same_settings(done: Path, saved: dict, settings: dict) -> None:
    """A finished run is reused only if it was made with these settings (older results without them: as before)."""
    if "settings" not in saved:
        return
    old, new = flatten(saved["settings"]), flatten(settings)
    changed = [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if changed:
        raise UserError(f"{done} was made with other settings ({'; '.join(changed)}); use a new --output-dir, or "
                        "delete that file to train the run again")


def run_task_grid(model: str, task: Task, glue_dir: str | None, grid: GridConfig, output_dir: Path,
                  cache: dict, log=print) -> dict:
    cells = {}
    for lr in grid.lrs:
        for bs in grid.batch_sizes:
            runs = []
            cfg = FinetuneConfig(**{**asdict(grid.finetune), "lr": lr, "batch_size": bs})
            settings = run_settings(model, task, glue_dir, grid, cfg)
            for seed in range(grid.seeds):
                run_dir = output_dir / task.name / cell_name(lr, bs) / f"seed{seed}"
                done = run_dir / "result.json"
                if done.is_file():
                    runs.append(json.loads(done.read_text()))
                    check_same_settings(done, runs[-1], settings)
                    log(f"{task.name} {cell_name(lr, bs)} seed {seed}: done before, loaded"
                        + (" (diverged; delete its result.json to retry)" if failed(runs[-1]) else ""))
                    continue
                result = {**run_one(model, task, glue_dir, grid, cfg, seed, run_dir, cache), "settings": settings}
                atomic_write_text(done, json.dumps(result, indent=1))
                log(f"{task.name} {cell_name(lr, bs)} seed {seed}: {describe(result)}")
                runs.append(result)
            cells[cell_name(lr, bs)] = summarise_cell(task, runs)
    chosen = choose_cell(task, cells)
    result = {"status": "ok" if chosen else "failed", "cells": cells, "chosen": chosen,
              "metrics": cells[chosen]["metrics"] if chosen else None,
              "combined": cells[chosen]["combined"] if chosen else None, "primary": task.primary,
              "n_runs": sum(len(c["runs"]) for c in cells.values()),
              "n_failed": sum(c["n_failed"] for c in cells.values())}
    if note := failure_note(task.name, result):
        log(note)
    return result


def portable(command: str) -> str:
    """The command without this machine's absolute paths: relative inside the repository, else <outside>/name."""
    def one(token: str) -> str:
        key, sep, value = token.rpartition("=") if "=/" in token else ("", "", token)
        if not value.startswith("/"):
            return token
        path = Path(value)
        inside = path.is_relative_to(ROOT)
        return key + sep + (str(path.relative_to(ROOT)) if inside else f"<outside>/{path.name}")
    return " ".join(one(token) for token in command.split(" "))


def portable_paths(result):
    """A results object for a committed file: model paths without this machine's prefix, and without the per-example dev
    predictions (they stay in each run's result.json, where kd_core.glue.compare reads them)."""
    def slim(value):
        if isinstance(value, dict):
            return {k: slim(v) for k, v in value.items() if k != "dev_examples"}
        if isinstance(value, list):
            return [slim(v) for v in value]
        return portable(value) if isinstance(value, str) and value.startswith("/") else value
    return slim(result)


def provenance(command: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # torch is always there; the device query is best-effort
        device = "unknown"
    return {"command": portable(command), "commit": commit.stdout.strip() or "unknown",
            "hardware": f"{platform.machine()} {os.cpu_count()} cores, {device}", "date": time.strftime("%Y-%m-%d")}


def run_grid(model: str, tasks: list[Task], glue_dir: str | None, grid: GridConfig, output_dir: str | Path,
             command: str = "", label: str | None = None) -> dict:
    t0 = time.perf_counter()
    cache = preflight(model, tasks, glue_dir, grid)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    per_task = {t.name: run_task_grid(model, t, glue_dir, grid, output_dir, cache) for t in tasks}
    combined = {name: r["combined"]["median"] if r["combined"] else None for name, r in per_task.items()}
    results = {"model": model, "label": label or Path(model).name, "tasks": per_task, **glue_macro(combined),
               "grid": asdict(grid), "glue_dir": glue_dir, "wall_s": round(time.perf_counter() - t0, 1),
               "provenance": provenance(command)}
    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=1))
    atomic_write_text(output_dir / "results.md", markdown_table([results]) + "\n")
    return results
