"""A resumable grid over learning rates x batch sizes x seeds, model selection on dev, and the report.

Each (task, cell, seed) writes `<out>/<task>/lr<lr>_bs<bs>/seed<k>/result.json` when it finishes;
a rerun loads finished ones instead of training them again. The chosen cell is the one with the
best median primary metric over seeds; its every metric is reported per seed, with median, mean,
standard deviation, min and max.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..checkpoint import atomic_write_text
from .distill import TaskDistillConfig, distill_and_evaluate
from .finetune import FinetuneConfig, finetune_and_evaluate
from .metrics import glue_macro
from .tasks import Task

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


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def summarise_cell(task: Task, runs: list[dict]) -> dict:
    metrics = {m: spread([r["metrics"][m] for r in runs]) for m in runs[0]["metrics"]}
    return {"runs": runs, "metrics": metrics, "combined": spread([r["combined"] for r in runs]),
            "primary_median": metrics[task.primary]["median"]}


def teacher_for(teacher: str, task: Task) -> str:
    """A teacher per task: `{task}` in the path is replaced by the task name (e.g. runs/teacher/{task})."""
    return teacher.replace("{task}", task.name)


def run_task_grid(model: str, task: Task, glue_dir: str | None, grid: GridConfig, output_dir: Path,
                  log=print) -> dict:
    cells = {}
    cache: dict = {}
    for lr in grid.lrs:
        for bs in grid.batch_sizes:
            runs = []
            for seed in range(grid.seeds):
                run_dir = output_dir / task.name / cell_name(lr, bs) / f"seed{seed}"
                done = run_dir / "result.json"
                if done.is_file():
                    runs.append(json.loads(done.read_text()))
                    log(f"{task.name} {cell_name(lr, bs)} seed {seed}: done before, loaded")
                    continue
                cfg = FinetuneConfig(**{**asdict(grid.finetune), "lr": lr, "batch_size": bs})
                if grid.teacher:
                    result = distill_and_evaluate(model, teacher_for(grid.teacher, task), task, glue_dir, cfg,
                                                  grid.distill, seed, run_dir, cache)
                else:
                    result = finetune_and_evaluate(model, task, glue_dir, cfg, seed, run_dir, cache)
                atomic_write_text(done, json.dumps(result, indent=1))
                log(f"{task.name} {cell_name(lr, bs)} seed {seed}: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items()) + f" ({result['wall_s']} s)")
                runs.append(result)
            cells[cell_name(lr, bs)] = summarise_cell(task, runs)
    chosen = max(cells, key=lambda c: cells[c]["primary_median"])
    return {"cells": cells, "chosen": chosen, "metrics": cells[chosen]["metrics"],
            "combined": cells[chosen]["combined"], "primary": task.primary}


def provenance(command: str) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # torch is always there; the device query is best-effort
        device = "unknown"
    return {"command": command, "commit": commit.stdout.strip() or "unknown",
            "hardware": f"{platform.machine()} {os.cpu_count()} cores, {device}", "date": time.strftime("%Y-%m-%d")}


def run_grid(model: str, tasks: list[Task], glue_dir: str | None, grid: GridConfig, output_dir: str | Path,
             command: str = "", label: str | None = None) -> dict:
    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    per_task = {t.name: run_task_grid(model, t, glue_dir, grid, output_dir) for t in tasks}
    combined = {name: r["combined"]["median"] for name, r in per_task.items()}
    results = {"model": model, "label": label or Path(model).name, "tasks": per_task, **glue_macro(combined),
               "grid": asdict(grid), "glue_dir": glue_dir, "wall_s": round(time.perf_counter() - t0, 1),
               "provenance": provenance(command)}
    atomic_write_text(output_dir / "results.json", json.dumps(results, indent=1))
    from .report import markdown_table

    atomic_write_text(output_dir / "results.md", markdown_table([results]) + "\n")
    return results
