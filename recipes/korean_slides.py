"""Korean slides (knowledge distillation for a lightweight Korean RoBERTa): a DistilBERT-shaped and a TinyBERT-
shaped (4 layers x 312) student from general distillation, then fine-tuned three ways: plainly, "+ pred"
(task distillation from the fine-tuned teacher's logits, L_pred = MSE(z_S, z_T)), and "+ trm + pred" (two
stages: TinyBERT's embedding/hidden/attention terms first, then L_pred).

python recipes/korean_slides.py --scale smoke|small|paper [--output-dir runs/korean] [--glue-dir DIR] [--corpus DIR]
                                [--tasks sst2,mrpc] [--results results/korean_slides.md]

General distillation: recipes/configs/distilbert.yaml (5 L_ce + 2 L_mlm + L_cos; paper: 6 of bert-base-uncased's
12 layers; small/smoke: 3 of 6) and recipes/configs/tinybert_4x312.yaml (random init, L_emb + L_hid + L_att
through learned projections, map g(m) = last layer of each block). Task teacher: the MLM teacher fine-tuned
per task with the scale's grid (its chosen cell, seed 0).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent

from scales import distil_once, evaluate_on_glue, recipe_parser, setup_from_args, write_table

from bert_kd.distill import DistilConfig, run
from kd_core.config import load_config
from kd_core.glue.compare import claims_table
from kd_core.glue.distill import TaskDistillConfig
from kd_core.student import save_untrained_student
from transformers import AutoModelForMaskedLM
from kd_core.glue.grid import cell_name
from kd_core.cli import script_exit

STUDENTS = [("DistilBERT-shaped", "distilbert", "distilbert.yaml"), ("TinyBERT-shaped 4x312", "tinybert", "tinybert_4x312.yaml")]
QUOTED = [  # the slides' result table: NSMC acc, KorQuAD 1.0 EM / F1, ETRI NER (two F1 columns as printed)
    ("RoBERTa (teacher)", "91.14", "87.11 / 94.47", "92.80 / 93.47"), ("DistilRoBERTa", "89.93", "82.99 / 91.42", "92.13 / 91.75"),
    ("+ pred", "90.02", "83.97 / 92.47", "92.22 / 92.09"), ("+ trm + pred", "89.89", "83.13 / 91.66", "90.73 / 92.31"),
    ("TinyRoBERTa", "87.20", "72.01 / 83.22", "86.88 / 85.70"), ("+ pred", "87.87", "75.16 / 86.31", "87.15 / 84.58"),
    ("+ trm + pred", "88.20", "75.90 / 87.05", "87.69 / 85.05")]


def link_task_teachers(teacher_results: dict, glue_dir: Path, links: Path) -> str:
    """links/<task> -> the fine-tuned teacher of the chosen cell (seed 0); returns the `{task}` pattern."""
    links.mkdir(parents=True, exist_ok=True)
    for task, result in teacher_results.tasks.items():
        lr, bs = result.chosen.removeprefix("lr").split("_bs")
        target = glue_dir / task / cell_name(float(lr), int(bs)) / "seed0" / "model"
        link = links / task
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target.resolve(), link)
    return str(links / "{task}")


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, "korean_slides")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    s = setup_from_args(args, None if args.scale == "smoke" else ["sst2", "mrpc"])
    common = [f"data.corpus={s.corpus}"]
    if s.scale != "paper":
        common += [f"teacher={s.mlm_teacher}", *s.student_train, *s.bert_kd]
    shape = {"distilbert": [] if s.scale == "paper" else ["student.num_layers=3", "student.layers=every_other"],
             "tinybert": []}
    if s.scale == "smoke":  # L_att needs the teacher's head count: the tiny teacher has 2 heads of 16
        shape["tinybert"] = ["student.hidden_size=24", "student.num_attention_heads=2", "student.intermediate_size=48"]
    teacher_grid = replace(s.grid, finetune=replace(s.grid.finetune, save_model=True))
    teacher = evaluate_on_glue(s.mlm_teacher, s, out / "teacher", f"teacher ({s.teacher_layers} layers)", teacher_grid)
    task_teacher = link_task_teachers(teacher, out / "teacher" / "glue", out / "task_teachers")
    ways = {"": None, " + pred": TaskDistillConfig(mode="pred", pred_loss="mse"),
            " + trm + pred": TaskDistillConfig(mode="two-stage", pred_loss="mse", stage1_epochs=s.grid.finetune.epochs)}
    results = [teacher]
    for label, name, config in STUDENTS:
        distil_once(DistilConfig, run, HERE / "configs" / config, [*common, *shape[name]], out / name)
        for suffix, distill in ways.items():
            grid = s.grid if distill is None else replace(s.grid, teacher=task_teacher, distill=distill)
            run_dir = out / name / ("finetune" if distill is None else distill.mode)
            results.append(evaluate_on_glue(str(out / name / "final"), s, run_dir, label + suffix, grid))
    # the control for general distillation: the DistilBERT-shaped student truncated from the teacher, not distilled
    distil_cfg = load_config(DistilConfig, HERE / "configs" / "distilbert.yaml", [*common, *shape["distilbert"]])
    truncated = save_untrained_student(distil_cfg.teacher, distil_cfg.student, out / "truncated" / "final",
                                       AutoModelForMaskedLM)
    results.append(evaluate_on_glue(str(truncated), s, out / "truncated", "control: DistilBERT-shaped truncated, "
                                                                           "not distilled"))
    by_label = {r.label: r for r in results}
    claims = [(f"{label}{suffix}", label) for label, _, _ in STUDENTS for suffix in (" + pred", " + trm + pred")]
    claims.append(("DistilBERT-shaped", results[-1].label))
    quoted = ["| model (slides, quoted) | NSMC acc | KorQuAD 1.0 EM / F1 | ETRI NER F1 |", "|---|---|---|---|"]
    quoted += [f"| {' | '.join(row)} |" for row in QUOTED]
    notes = ["The slides' table (quoted; Korean RoBERTa teacher, 15 GB corpus, Korean tasks), for the pattern only: "
             "+ pred helps both students, + trm + pred helps the TinyBERT-shaped one more than the DistilBERT-shaped one.",
             "", *quoted, "",
             f"Scores are means ± std over {s.grid.seeds} fine-tuning seeds of one distillation run per student (the "
             "claims are about fine-tuning with a task teacher, so the distillation seed is not varied). The claims "
             "(paired bootstrap over dev examples, seeds combined, 2,000 replicates; significant only when the 95% "
             "interval excludes 0), and general distillation against its control:", "",
             *claims_table([(by_label[a], by_label[b]) for a, b in claims], s.tasks)]
    title = f"Korean slides at {s.scale} scale: student shape, + pred, + two-stage"
    print(write_table(args, "korean_slides", title, results, [], notes, s, argv, t0))
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
