"""A resumable grid over learning rates x batch sizes x seeds, model selection on dev, and the report.

Each (task, cell, seed) writes `<out>/<task>/lr<lr>_bs<bs>/seed<k>/result.json` when it finishes;
a rerun loads finished ones instead of training them again. The chosen cell and the score are defined once,
in kd_core.glue.results (the mean over seeds); every metric is reported per seed, with median, mean,
standard deviation, min and max.

A run that diverges (non-finite training loss, predictions or dev score) is recorded as failed in its
result.json, so a rerun loads it rather than retrying it forever (delete the file to retry). Each result.json
records the settings that produced it (model, GLUE folder, fine-tuning config, task teacher); loading one made with
other settings is an error naming the difference, never a silent reuse. A cell's
metrics are over its finite seeds, with n_failed; in selection acell ranks below every cell without a failure. A cell with no finite seed is never chosen;
a task with no such cell is reported as failed, without a score, and the GLUE score is not computed.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import flatten
from ..files import atomic_write_text
from ..engine import NonFiniteLossError
from ..errors import UserError, one_line
from .distill import TaskDistillConfig, check_task_teacher, distill_and_evaluate
from .finetune import FinetuneConfig, check_model, check_positions, finetune_and_evaluate, load_examples
from ..provenance import provenance
from .metrics import DivergedError
from .report import markdown_table
from .results import Cell, ModelResults, Run, TaskResult
from .tasks import TASKS, Task


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
    if grid.teacher:
        problems += grid.distill.problems()
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
    for task in tasks if grid.teacher else []:
        check_task_teacher(teacher_for(grid.teacher, task), task)
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


def describe(run: Run) -> str:
    """The tail of a run's log line: its metrics, or why it failed."""
    if not run.ok:
        return f"diverged: {run.error or 'non-finite dev metrics'}"
    return ", ".join(f"{k} {v:.2f}" for k, v in run.metrics.items()) + f" ({run.record.get('wall_s')} s)"


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
                  cache: dict, log=print) -> TaskResult:
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
                    saved = json.loads(done.read_text())
                    check_same_settings(done, saved, settings)
                    runs.append(Run.from_json(saved))
                    log(f"{task.name} {cell_name(lr, bs)} seed {seed}: done before, loaded"
                        + (" (diverged; delete its result.json to retry)" if not runs[-1].ok else ""))
                    continue
                result = {**run_one(model, task, glue_dir, grid, cfg, seed, run_dir, cache), "settings": settings}
                atomic_write_text(done, json.dumps(result, indent=1))
                runs.append(Run.from_json(result))
                log(f"{task.name} {cell_name(lr, bs)} seed {seed}: {describe(runs[-1])}")
            cells[cell_name(lr, bs)] = Cell(runs)
    result = TaskResult(task.name, cells)
    if note := result.failure_note():
        log(note)
    return result


def run_grid(model: str, tasks: list[Task], glue_dir: str | None, grid: GridConfig, output_dir: str | Path,
             command: str = "", label: str | None = None) -> ModelResults:
    t0 = time.perf_counter()
    cache = preflight(model, tasks, glue_dir, grid)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    per_task = {t.name: run_task_grid(model, t, glue_dir, grid, output_dir, cache) for t in tasks}
    results = ModelResults(label or Path(model).name, model, per_task,
                           extra={"grid": asdict(grid), "glue_dir": glue_dir, "wall_s": round(time.perf_counter() - t0, 1),
                                  "provenance": provenance(command)})
    atomic_write_text(output_dir / "results.json", json.dumps(results.to_json(), indent=1))
    atomic_write_text(output_dir / "results.md", markdown_table([results]) + "\n")
    return results
