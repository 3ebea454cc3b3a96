"""DistilBERT Table 4, the loss ablation: the triple loss 5 L_ce + 2 L_mlm + L_cos from teacher layers, against
dropping L_ce, L_cos or L_mlm, and against the triple loss from random weights; change in GLUE macro score.

python recipes/distilbert_table4.py --scale smoke|small|paper [--output-dir runs/distilbert_table4] [--glue-dir DIR]
                                    [--corpus DIR] [--tasks ...] [--results results/distilbert_table4.md] [--dry-run]

paper: recipes/configs/distilbert.yaml as it is (6 layers of bert-base-uncased, teacher layers 0,2,4,7,9,11).
small/smoke: 3 layers of the 6-layer teacher (layers 0,2,4), the scale's budget (see scales.py).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from scales import distil_once, evaluate_on_glue, recipe_parser, setup_from_args, write_table

from bert_kd.distill import DistilConfig, run

# (label, run name, overrides, the paper's change in GLUE macro score vs the triple loss; None for the reference)
ROWS = [("triple loss, teacher init", "triple", [], None),
        ("∅ - L_cos - L_mlm (no L_ce)", "no_ce", ["loss_weights.ce=0"], -2.96),
        ("L_ce - ∅ - L_mlm (no L_cos)", "no_cos", ["loss_weights.cos=0"], -1.46),
        ("L_ce - L_cos - ∅ (no L_mlm)", "no_mlm", ["loss_weights.mlm=0"], -0.31),
        ("triple loss, random init", "random_init", ["student.init=random"], -3.69)]


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, "distilbert_table4", dry_run=True)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    s = setup_from_args(args)
    common = [f"data.corpus={s.corpus}"]
    if s.scale != "paper":
        common += [f"teacher={s.mlm_teacher}", "student.num_layers=3", "student.layers=every_other",
                   *s.student_train, *s.bert_kd]
    results = []
    for label, name, extra, _ in ROWS:
        distil_once(DistilConfig, run, HERE / "configs" / "distilbert.yaml", [*common, *extra], out / name, args.dry_run)
        if not args.dry_run:
            results.append(evaluate_on_glue(str(out / name / "final"), s, out / name, label))
    if args.dry_run:
        return 0
    failed = [label for (label, *_), r in zip(ROWS, results) if r["glue_macro"] is None]
    if failed:  # a diverged row has no score: report it, never rank it
        print(f"rows with a failed GLUE task (see their results.json): {', '.join(failed)}; no table written")
        return 1
    reference = results[0]["glue_macro"]
    lines = ["| ablation | our GLUE macro | our change | paper's change (quoted) |", "|---|---|---|---|"]
    for (label, _, _, quoted), r in zip(ROWS, results):
        change = "–" if quoted is None else f"{r['glue_macro'] - reference:+.2f}"
        lines.append(f"| {label} | {r['glue_macro']:.2f} | {change} | {'–' if quoted is None else f'{quoted:+.2f}'} |")
    ours = sorted(ROWS[1:], key=lambda row: results[ROWS.index(row)]["glue_macro"])
    paper = sorted(ROWS[1:], key=lambda row: row[3])
    agree = [row[1] for row in ours] == [row[1] for row in paper]
    notes = ["Change in GLUE macro score relative to the triple loss with teacher initialisation:", "", *lines, "",
             f"Worst to least harmful, ours: {', '.join(row[1] for row in ours)}; the paper's: "
             f"{', '.join(row[1] for row in paper)} ({'the same ordering' if agree else 'the orderings DISAGREE'}).",
             "Quoted: Sanh et al. 2019, Table 4 (their GLUE macro over 9 tasks, teacher bert-base-uncased)."]
    print(write_table(args, "distilbert_table4", f"DistilBERT Table 4 at {s.scale} scale: loss ablation", results, [],
                      notes, s, argv, t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
