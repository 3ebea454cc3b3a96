"""The b1/b2/b3 ablation: one distillation run per grid point, each followed by the GLUE harness.

python -m electra_kd ablate --grid recipes/configs/electra_ablation.yaml --output-dir DIR [--set base.key=value]

The grid file names a base run config, the values of b1, b2, b3 to cross, and the GLUE settings.
Resumable at every level: a finished run (its final/ exists) is not trained again, an interrupted
one continues from its newest checkpoint, and the GLUE grid loads finished fine-tuning runs.
Writes ablation.json, ablation.md, heatmap.png (the GLUE score over b1 x b2, one panel per b3)
and TensorBoard hparams under tb/ so the runs compare side by side.

With `controls` (default), two rows give the grid its meaning: the teacherless point b1=b2=b3=0 (the student's own
RTD loss on the frozen generator's replacements, same steps) and the student truncated from the teacher and not
distilled; every grid point is compared with both by a paired bootstrap over dev examples (seeds combined).
The points in `seeded_points` (the full loss and the teacherless point by default) are distilled `distill_seeds`
times (train.seed, +1, ...; seed k > 0 in <point>_seed<k>) and their fine-tuning runs pooled into one row.
"""
from __future__ import annotations

import itertools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from kd_core.config import finished_with, load_config, out_of_range, to_dict
from kd_core.files import atomic_write_text, seed_run_dirs
from kd_core.glue.compare import claims_table
from kd_core.glue.finetune import FinetuneConfig
from kd_core.glue.grid import GridConfig, run_grid
from kd_core.glue.results import ModelResults, pooled
from kd_core.provenance import provenance
from kd_core.glue.tasks import get_task
from kd_core.metrics_log import read_metrics
from kd_core.plot import heatmap
from kd_core.student import save_untrained_student
from transformers import ElectraForPreTraining

from .distill import ElectraRunConfig, run


@dataclass
class GlueSettings:
    tasks: list[str] = field(default_factory=lambda: ["rte"])
    glue_dir: str | None = None
    lrs: list[float] = field(default_factory=lambda: [1e-4])
    batch_sizes: list[int] = field(default_factory=lambda: [32])
    seeds: int = 1
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class AblationConfig:
    base: ElectraRunConfig = field(default_factory=ElectraRunConfig)
    b1: list[float] = field(default_factory=lambda: [0.0, 1.0])
    b2: list[float] = field(default_factory=lambda: [0.0, 1.0])
    b3: list[float] = field(default_factory=lambda: [0.0, 1.0])
    glue: GlueSettings = field(default_factory=GlueSettings)
    controls: bool = True  # also run the teacherless point (0, 0, 0) and the truncated student, and compare
    distill_seeds: int = 1  # distillation seeds of each point in seeded_points (every other point: one)
    seeded_points: list[list[float]] = field(default_factory=lambda: [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])

    def problems(self) -> list[str]:
        return out_of_range([(not self.distill_seeds >= 1, f"distill_seeds={self.distill_seeds}: give 1 or more")] +
                            [(len(b) != 3, f"seeded_points: {b} is not a (b1, b2, b3) triple") for b in self.seeded_points])


def point_name(b1: float, b2: float, b3: float) -> str:
    return f"b1={b1:g}_b2={b2:g}_b3={b3:g}"


def run_glue(cfg: AblationConfig, model: Path, out: Path, label: str) -> ModelResults:
    g = cfg.glue
    return run_grid(str(model), [get_task(t) for t in g.tasks], g.glue_dir,
                    GridConfig(lrs=g.lrs, batch_sizes=g.batch_sizes, seeds=g.seeds, finetune=g.finetune), out, label=label)


def summary(glue: ModelResults, run_dir: Path) -> dict:
    """A row of the table: the GLUE score (kd_core.glue.results; NaN, shown as failed, when a task diverged) ± its
    std over runs, and each task's mean metrics."""
    return {"run_dir": str(run_dir), "score": glue.score if glue.score is not None else float("nan"),
            "score_std": glue.score_std,
            "glue": {name: {m: s["mean"] for m, s in (t.metrics or {}).items()} for name, t in glue.tasks.items()}}


def seeds_of_point(cfg: AblationConfig, b: tuple[float, float, float]) -> int:
    return cfg.distill_seeds if list(b) in cfg.seeded_points else 1


def run_point(cfg: AblationConfig, b: tuple[float, float, float], out: Path, log=print) -> tuple[dict, ModelResults]:
    """(the point's row, its GLUE results): one distillation run per seed, their fine-tuning runs pooled; the
    final losses are means over the distillation seeds."""
    name = point_name(*b)
    seeds = seeds_of_point(cfg, b)
    run_dirs = seed_run_dirs(out / name, seeds)
    glues, finals, evals = [], [], []
    for k, run_dir in enumerate(run_dirs):
        run_cfg = load_config(ElectraRunConfig, base=to_dict(cfg.base), overrides=[
            f"loss.b1={b[0]}", f"loss.b2={b[1]}", f"loss.b3={b[2]}", f"train.seed={cfg.base.train.seed + k}"])
        what = f"{name} (distillation seed {run_cfg.train.seed})"
        if not finished_with(run_dir, run_cfg):
            log(f"== {what}: distillation")
            run(run_cfg, str(run_dir), resume=True)
        else:
            log(f"== {what}: distilled before with these settings, loaded")
        glues.append(run_glue(cfg, run_dir / "final", run_dir / "glue", name))
        records = read_metrics(run_dir / "metrics.jsonl")
        finals += [r for r in records if "loss/total" in r][-1:]
        evals += [r["eval/loss/rtd"] for r in records if "eval/loss/rtd" in r][-1:]
    glue = pooled(glues, name)
    losses = sorted({k for f in finals for k in f if k.startswith("loss/")})
    return {"b1": b[0], "b2": b[1], "b3": b[2], **summary(glue, run_dirs[0]), "distill_seeds": seeds,
            "run_dirs": [str(d) for d in run_dirs],
            "final_train_losses": {k: statistics.fmean(f[k] for f in finals if k in f) for k in losses},
            "final_eval_rtd": statistics.fmean(evals) if len(evals) == seeds else None}, glue


def run_controls(cfg: AblationConfig, out: Path, log=print) -> tuple[dict, ModelResults, dict, ModelResults]:
    """(teacherless row, its GLUE results, truncated row, its GLUE results)."""
    teacherless, teacherless_glue = run_point(cfg, (0.0, 0.0, 0.0), out, log)
    model = save_untrained_student(cfg.base.teacher, cfg.base.student, out / "truncated" / "final", ElectraForPreTraining)
    log("== truncated, not distilled: fine-tuning")
    truncated_glue = run_glue(cfg, model, out / "truncated" / "glue", "truncated, not distilled")
    return teacherless, teacherless_glue, summary(truncated_glue, out / "truncated"), truncated_glue


def write_hparams(out: Path, point: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    name = point_name(point["b1"], point["b2"], point["b3"])
    with SummaryWriter(str(out / "tb" / name)) as w:
        metrics = {"glue/score": point["score"]}
        if point["final_eval_rtd"] is not None:
            metrics["eval/loss/rtd"] = point["final_eval_rtd"]
        w.add_hparams({"b1": point["b1"], "b2": point["b2"], "b3": point["b3"]}, metrics, run_name=".")


def ablate(cfg: AblationConfig, output_dir: str | Path, command: str = "", log=print) -> list[dict]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    points, glues = [], []
    for b in itertools.product(cfg.b1, cfg.b2, cfg.b3):
        point, glue = run_point(cfg, b, out, log)
        write_hparams(out, point)
        points.append(point)
        glues.append(glue)
    tasks = ", ".join(cfg.glue.tasks)
    controls = {}
    title = f"GLUE dev score ({tasks}) over b1 x b2 x b3"
    claims_text = ""
    if cfg.controls:
        teacherless, teacherless_glue, truncated, truncated_glue = run_controls(cfg, out, log)
        controls = {"teacherless": teacherless, "truncated": truncated}
        claims = [(glue, control) for control in (teacherless_glue, truncated_glue) for glue in glues
                  if glue.model != control.model]
        claims_text = ("\nControl rows (same student, steps, data and fine-tuning): teacherless = b1=b2=b3=0, the "
                       "student's own RTD loss only; truncated = the same teacher layers, not distilled.\n\n"
                       "Each point against the controls (bootstrap over dev examples and runs, 2,000 replicates; "
                       "significant only when the 95% interval excludes 0):\n\n"
                       + "\n".join(claims_table(claims + [(teacherless_glue, truncated_glue)], cfg.glue.tasks)) + "\n")
        title += f"\ntruncated, not distilled: {score_text(truncated)}; teacherless = the (0, 0, 0) point"
    control_rows = [{**controls["teacherless"], "control": "teacherless"},
                    {**controls["truncated"], "control": "truncated, not distilled"}] if controls else []
    rows = points + control_rows
    metric_cols = sorted({(t, m) for p in rows for t, ms in p["glue"].items() for m in ms})
    lines = ["| b1 | b2 | b3 | runs | score | " + " | ".join(f"{t} {m}" for t, m in metric_cols)
             + " | final train L_ce (RTD) | held-out L_ce (RTD) |", "|" + "---|" * (len(metric_cols) + 7)]
    for p in rows:
        losses = [p.get("final_train_losses", {}).get("loss/rtd"), p.get("final_eval_rtd")]
        loss_text = " | ".join(f"{x:.4f}" if x is not None else "–" for x in losses)
        bs = f"{p['b1']:g} | {p['b2']:g} | {p['b3']:g}" if "b1" in p else "– | – | –"
        runs = f"{p['distill_seeds']} x {cfg.glue.seeds}" if "b1" in p else f"{cfg.glue.seeds}"
        lines.append(f"| {bs} | {runs} | {score_text(p)}{' (' + p['control'] + ')' if 'control' in p else ''} | "
                     + " | ".join(f"{p['glue'][t][m]:.2f}" if m in p["glue"][t] else "failed" for t, m in metric_cols)
                     + f" | {loss_text} |")
    text = (f"# ELECTRA b1/b2/b3 ablation (score: the GLUE score over {tasks}, mean ± std over the runs: "
            "distillation seeds x fine-tuning seeds)\n\n" + "\n".join(lines) + "\n" + claims_text)
    atomic_write_text(out / "ablation.md", text)
    atomic_write_text(out / "ablation.json", json.dumps({"points": points, "controls": controls, "config": to_dict(cfg),
                                                         "provenance": provenance(command)}, indent=1))
    shown = points + ([controls["teacherless"]] if controls and controls["teacherless"] not in points else [])
    heatmap(shown, out / "heatmap.png", title)
    return points


def score_text(row: dict) -> str:
    return f"{row['score']:.2f}" + (f" ± {row['score_std']:.2f}" if row["score_std"] is not None else "")
