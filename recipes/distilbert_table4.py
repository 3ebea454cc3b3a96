"""DistilBERT Table 4, the loss ablation: the triple loss 5 L_ce + 2 L_mlm + L_cos from teacher layers, against
dropping L_ce, L_cos or L_mlm, and against the triple loss from random weights; change in GLUE macro score.

python recipes/distilbert_table4.py --scale smoke|small|paper [--output-dir runs/distilbert_table4] [--glue-dir DIR]
                                    [--corpus DIR] [--tasks ...] [--results results/distilbert_table4.md] [--dry-run]

paper: recipes/configs/distilbert.yaml as it is (6 layers of bert-base-uncased, teacher layers 0,2,4,7,9,11).
small/smoke: 3 layers of the 6-layer teacher (layers 0,2,4), the scale's budget (see scales.py).
Controls beside the ablation: the student truncated from the teacher and not distilled, and the same student trained
teacherless (its own MLM loss only, same steps). Each change is a paired-bootstrap difference with its 95% interval.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from scales import TEACHERLESS_BERT, distilled_row, evaluate_on_glue, recipe_parser, setup_from_args, write_table
from transformers import AutoModelForMaskedLM

from bert_kd.distill import DistilConfig, run
from kd_core.config import load_config
from kd_core.glue.compare import claims_table, macro_difference
from kd_core.student import save_untrained_student
from kd_core.cli import script_exit

# (label, run name, overrides, the paper's change in GLUE macro score vs the triple loss; None for the reference)
ROWS = [("triple loss, teacher init", "triple", [], None),
        ("∅ - L_cos - L_mlm (no L_ce)", "no_ce", ["loss_weights.ce=0"], -2.96),
        ("L_ce - ∅ - L_mlm (no L_cos)", "no_cos", ["loss_weights.cos=0"], -1.46),
        ("L_ce - L_cos - ∅ (no L_mlm)", "no_mlm", ["loss_weights.mlm=0"], -0.31),
        ("triple loss, random init", "random_init", ["student.init=random"], -3.69)]


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, "distilbert_table4", dry_run=True, distill_seeds=True)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    s = setup_from_args(args)
    common = [f"data.corpus={s.corpus}"]
    if s.scale != "paper":
        common += [f"teacher={s.mlm_teacher}", "student.num_layers=3", "student.layers=every_other",
                   *s.student_train, *s.bert_kd]
    config = HERE / "configs" / "distilbert.yaml"
    results = []
    for label, name, extra, _ in ROWS:  # the reference row (triple loss) with the scale's distillation seeds
        results.append(distilled_row(DistilConfig, run, config, [*common, *extra], out / name, s, label,
                                     s.distill_seeds if name == "triple" else 1, args.dry_run))
    if args.dry_run:
        return 0
    teacherless = distilled_row(DistilConfig, run, config, [*common, *TEACHERLESS_BERT], out / "teacherless", s,
                                "control: teacherless (own MLM loss only), teacher init")
    triple = load_config(DistilConfig, config, common)
    truncated = save_untrained_student(triple.teacher, triple.student, out / "truncated" / "final", AutoModelForMaskedLM)
    controls = [teacherless, evaluate_on_glue(str(truncated), s, out / "truncated", "control: truncated, not distilled")]
    failed = [r.label for r in results + controls if r.score is None]
    if failed:  # a diverged row has no score: report it, never rank it
        print(f"rows with a failed GLUE task (see their results.json): {', '.join(failed)}; no table written")
        return 1
    reference = results[0]
    lines = ["| ablation | our macro (mean over seeds) | our change vs triple loss [95% interval] | paper's change (quoted) |",
             "|---|---|---|---|"]
    changes = {}
    for (label, name, _, quoted), r in zip(ROWS, results):
        if quoted is None:
            lines.append(f"| {label} | {r.score:.2f} | – | – |")
            continue
        d = changes[name] = macro_difference(r, reference, s.tasks, replicates=2000)
        lines.append(f"| {label} | {r.score:.2f} | {d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
                     f"{'' if d['significant'] else ' n.s.'} | {quoted:+.2f} |")
    ours = sorted(ROWS[1:], key=lambda row: changes[row[1]]["diff"])
    paper = sorted(ROWS[1:], key=lambda row: row[3])
    agree = [row[1] for row in ours] == [row[1] for row in paper]
    resolved = sum(changes[row[1]]["significant"] for row in ROWS[1:])
    notes = [f"Scores are means ± std over {s.grid.seeds} fine-tuning seeds; the triple-loss row pools "
             f"{s.distill_seeds} distillation seed(s). Change in GLUE macro relative to the triple loss with teacher "
             "initialisation (paired bootstrap over dev examples, seeds combined; n.s. = the 95% interval includes 0):",
             "", *lines, "",
             f"Worst to least harmful, ours: {', '.join(row[1] for row in ours)}; the paper's: "
             f"{', '.join(row[1] for row in paper)} ({'the same ordering' if agree else 'the orderings DISAGREE'}); "
             f"{resolved} of {len(ROWS) - 1} of our changes have an interval that excludes 0.",
             "Quoted: Sanh et al. 2019, Table 4 (their GLUE macro over 9 tasks, teacher bert-base-uncased).", "",
             "Does the triple loss beat the controls (same student, budget, data and fine-tuning)?", "",
             *claims_table([(reference, c) for c in controls] + [(controls[0], controls[1])], s.tasks)]
    results += controls
    print(write_table(args, "distilbert_table4", f"DistilBERT Table 4 at {s.scale} scale: loss ablation", results, [],
                      notes, s, argv, t0))
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
