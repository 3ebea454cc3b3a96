"""A 3-layer ELECTRA student distilled from an ELECTRA teacher vs the same student pretrained
without a teacher for the same steps (same init, data order, masks and frozen generator), both
fine-tuned on GLUE tasks. Writes a Markdown + JSON table.

python recipes/electra_kd_vs_pretrain.py --teacher-run DIR --corpus DIR --glue-dir DIR --output-dir DIR
    [--steps 300] [--b 1,1,1] [--tasks rte,mrpc,stsb] [--seeds 3] [--set section.key=value ...]

--teacher-run is the output of `recipes/teachers.py electra` (final/ = discriminator, generator/).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from electra_kd.distill import ElectraRunConfig, run
from kd_core.files import atomic_write_text
from kd_core.config import finished_with, load_config
from kd_core.glue.finetune import FinetuneConfig
from kd_core.glue.grid import GridConfig, run_grid
from kd_core.provenance import provenance
from kd_core.glue.report import markdown_table
from kd_core.glue.tasks import get_task
from kd_core.metrics_log import read_metrics
from kd_core.cli import script_exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher-run", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--glue-dir", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--b", default="1,1,1", help="b1,b2,b3 of the distilled student")
    parser.add_argument("--tasks", default="rte,mrpc,stsb")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    teacher_run, out = Path(args.teacher_run), Path(args.output_dir)
    b1, b2, b3 = (float(x) for x in args.b.split(","))
    common = [f"teacher={teacher_run / 'final'}", f"generator.path={teacher_run / 'generator'}",
              f"data.corpus={args.corpus}", "student.num_layers=3", "student.layers=every_other",
              "student.init=teacher", f"train.max_steps={args.steps}", "train.batch_size=32",
              "train.micro_batch_size=32", "train.lr=2e-4", "train.warmup_ratio=0.1", "train.log_every=10",
              "train.eval_every=100", "train.eval_batches=5", *args.overrides]
    runs = {"distilled": [f"loss.b1={b1}", f"loss.b2={b2}", f"loss.b3={b3}"],
            "pretrained (no teacher)": ["loss.b1=0", "loss.b2=0", "loss.b3=0"]}
    tasks = [get_task(t) for t in args.tasks.split(",")]
    grid = GridConfig(lrs=[args.lr], batch_sizes=[32], seeds=args.seeds, finetune=FinetuneConfig(epochs=3))
    results, losses = [], {}
    for label, extra in runs.items():
        run_dir = out / ("distilled" if label == "distilled" else "pretrained")
        run_cfg = load_config(ElectraRunConfig, overrides=common + extra)
        if not finished_with(run_dir, run_cfg):
            run(run_cfg, str(run_dir), resume=True)
        evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval/loss/rtd" in r]
        losses[label] = evals[-1]
        results.append(run_grid(str(run_dir / "final"), tasks, args.glue_dir, grid, run_dir / "glue",
                                label=f"3-layer ELECTRA student, {label}"))
    results.append(run_grid(str(teacher_run / "final"), tasks, args.glue_dir, grid, out / "teacher_glue",
                            label="6-layer ELECTRA teacher"))
    table = markdown_table(results)
    lines = [f"# ELECTRA: distilled (b1,b2,b3 = {args.b}) vs pretrained without a teacher, {args.steps} steps each",
             "", table, "", "Held-out losses at the end of pretraining (same masks):", "",
             "| student | RTD L_ce | " + " | ".join(k for k in losses["distilled"] if k.startswith("eval/loss/")
                                                  and k not in ("eval/loss/rtd", "eval/loss/total")) + " |",
             "|" + "---|" * (sum(k.startswith("eval/loss/") for k in losses["distilled"])) ]
    for label, rec in losses.items():
        lines.append(f"| {label} | {rec['eval/loss/rtd']:.4f} | " + " | ".join(
            f"{rec.get(k, float('nan')):.4f}" for k in losses["distilled"]
            if k.startswith("eval/loss/") and k not in ("eval/loss/rtd", "eval/loss/total")) + " |")
    prov = provenance("python recipes/electra_kd_vs_pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv))
    prov["wall_s"] = round(time.perf_counter() - t0, 1)
    lines += ["", "Provenance: " + json.dumps(prov)]
    atomic_write_text(out / "electra_kd_vs_pretrain.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "electra_kd_vs_pretrain.json",
                      json.dumps({"results": [r.to_json() for r in results], "eval_losses": losses, "provenance": prov}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
