"""HerBERT report, scenarios S0-S5: how a half-depth student starts (random or truncated from the teacher's
layers), how it is trained (not at all, MLM only, DistilBERT's distillation), and from which teacher (T0 as
published, or T1 = T0 adapted further on the distillation corpus); every model fine-tuned on GLUE.

python recipes/herbert_scenarios.py --scale smoke|small|paper [--output-dir runs/herbert] [--teacher NAME_OR_DIR]
                                    [--glue-dir DIR] [--corpus DIR] [--tasks ...] [--results results/herbert_scenarios.md]

paper: T0 = bert-base-uncased (pass --teacher allegro/herbert-base-cased with a Polish corpus for the report's
       setting; our harness fine-tunes on GLUE, not KLEJ), a 6-layer student, recipes/configs/distilbert.yaml's
       budget; T1 = T0 after that many more MLM steps on the corpus (recipes/teachers.py mlm).
small/smoke: T0 = the offline MLM teacher (6 layers), 3-layer students (teacher layers 0,2,4), the scale's budget.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from scales import TEACHERLESS_BERT, distilled_row, evaluate_on_glue, recipe_parser, setup_from_args, teacher_on_glue, write_table
from teachers import build_teacher

from bert_kd.distill import DistilConfig, run
from kd_core.config import load_config
from kd_core.glue.compare import claims_table
from kd_core.student import save_untrained_student
from transformers import AutoModelForMaskedLM
from kd_core.cli import script_exit

# name, init, training (None: none), teacher; the report's Table 1
SCENARIOS = [("S0", "random", None, "T0"), ("S1", "random", "mlm", "T0"), ("S2", "teacher", None, "T0"),
             ("S3", "teacher", "mlm", "T0"), ("S4", "teacher", "distil", "T0"), ("S5", "teacher", "distil", "T1")]
QUOTED = {"S0": (80.22, 55.84, 47.55), "S1": None, "S2": (86.58, 74.9, 90.21), "S3": None,
          "S4": (90.04, 75.3, 90.88), "S5": (90.32, 75.51, 90.52), "T0": (89.9, 79.35, 92.68),
          "T1": (89.9, 77.33, 93.1)}


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, "herbert_scenarios", distill_seeds=True)
    parser.add_argument("--teacher", help="T0 (default: the scale's MLM teacher)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    s = setup_from_args(args)
    teacher0 = args.teacher or s.mlm_teacher
    common = [f"data.corpus={s.corpus}", "student.arch=same", "student.layers=every_other"]
    if s.scale != "paper":
        common += ["student.num_layers=3", *s.student_train, *s.bert_kd]
    config = HERE / "configs" / "distilbert.yaml"
    t1_steps = next((int(o.split("=")[1]) for o in s.student_train if o.startswith("train.max_steps=")), 20000)
    teacher1 = build_teacher("mlm", s.corpus, t1_steps, [o for o in common if o.startswith("train.")],
                             output=out / "T1", encoder=teacher0)
    teachers = {"T0": teacher0, "T1": str(teacher1 / "final")}
    results = {}
    for name, init, training, teacher in SCENARIOS:
        overrides = [*common, f"teacher={teachers[teacher]}", f"student.init={init}"]
        label = f"{name}: {'random' if init == 'random' else 'truncated'} init, " + {
            None: "no pretraining", "mlm": "MLM only", "distil": f"distilled from {teacher}"}[training]
        if training is None:  # S0 and S2 are fine-tuned as built
            student = load_config(DistilConfig, config, overrides).student
            save_untrained_student(teachers[teacher], student, out / name / "final", AutoModelForMaskedLM)
            results[name] = evaluate_on_glue(str(out / name / "final"), s, out / name, label)
        else:  # S4, the distillation the claims are about, with the scale's distillation seeds
            results[name] = distilled_row(DistilConfig, run, config, overrides + (TEACHERLESS_BERT if training == "mlm" else []),
                                          out / name, s, label, s.distill_seeds if name == "S4" else 1)
    results["T0"] = teacher_on_glue(teacher0, s, out / "T0_glue", "T0: teacher")
    results["T1"] = evaluate_on_glue(teachers["T1"], s, out / "T1_glue", "T1: teacher adapted further on the corpus")
    claims = [("S4", "S2"), ("S4", "S3"), ("S3", "S2"), ("S2", "S0"), ("S1", "S0"), ("S5", "S4")]
    quoted = ["| scenario | PolEmo2.0-IN | PolEmo2.0-OUT | NKJP-NER |", "|---|---|---|---|"]
    quoted += [f"| {name} | " + (" | ".join(f"{v:.2f}" for v in row) if row else "X (not reported) | X | X") + " |"
               for name, row in QUOTED.items()]
    notes = [f"Scores are means ± std over {s.grid.seeds} fine-tuning seeds; S4 pools {s.distill_seeds} distillation "
             f"seed(s). The claims (paired bootstrap over dev examples, seeds combined, 2,000 replicates; significant "
             "only when the 95% interval excludes 0): distillation vs the truncated start (S4 - S2) and vs the same "
             "steps of MLM alone (S4 - S3), MLM vs truncated (S3 - S2), truncation vs random (S2 - S0), MLM from "
             "random (S1 - S0), the adapted teacher (S5 - S4).", "",
             *claims_table([(results[a], results[b]) for a, b in claims], s.tasks), "",
             "The report's Table 2 (quoted; HerBERT-base teacher, KLEJ accuracy, max over 20 epochs), for the "
             "ordering only (different language, tasks and scale):", "", *quoted, "",
             f"T1 = T0 after {t1_steps} more MLM steps on the distillation corpus "
             "(recipes/teachers.py mlm with T0 as the encoder)."]
    print(write_table(args, "herbert_scenarios", f"HerBERT scenarios S0-S5 at {s.scale} scale", list(results.values()), [],
                      notes, s, argv, t0))
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
