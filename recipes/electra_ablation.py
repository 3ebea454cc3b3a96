"""The ELECTRA b1/b2/b3 ablation of L_kd = L_ce + b1 L_mse + b2 L_cos + b3 L_kl (Greek report, ELECTRA section):
one student distilled per grid point, each fine-tuned on GLUE; a table, a heatmap and TensorBoard hparams.

python recipes/electra_ablation.py --scale smoke|small|paper [--output-dir runs/electra_ablation] [--glue-dir DIR]
                                   [--corpus DIR] [--b1 0,1,2] [--b2 0,1,2] [--b3 1] [--distill-seeds N]
                                   [--results DIR]

The grid file is recipes/configs/electra_ablation.yaml (3-layer student from teacher layers 0,2,4, 300 steps).
paper: google/electra-base-discriminator as teacher (its generator frozen), a 6-layer student, 20,000 steps
       of batch 64 in bf16, the yaml's b grid and GLUE tasks.
small: the offline ELECTRA teacher, b1 x b2 in {0,1,2}^2 at b3 = 1 (nine points), each 200 steps x 16 rows,
       then SST-2 fine-tuned on 2,000 training sentences (3 epochs, 3 seeds); the full loss (1,1,1) and the
       teacherless point (0,0,0) are distilled with 2 seeds (--distill-seeds) and pooled; results/electra_ablation/.
       Smaller than the other recipes' small scale so that nine points and the two controls (teacherless
       b = 0,0,0 and the truncated student) fit about an hour on 2 CPU cores. At this budget
       3-layer students stay at the majority class on MRPC, near zero on STS-B and at chance on RTE (and
       RTE's long pairs cost 5 minutes per point), so SST-2 is the task that separates them; the table also
       gives each point's held-out RTD loss.
smoke: the tiny ELECTRA, two points.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from scales import recipe_parser, setup_from_args

from electra_kd.ablate import AblationConfig, ablate
from kd_core.files import atomic_write_text
from kd_core.config import load_config
from kd_core.provenance import portable, portable_paths
from kd_core.cli import script_exit

GRIDS = {"smoke": ("0,1", "1", "1"), "small": ("0,1,2", "0,1,2", "1"), "paper": (None, None, None)}
BUDGETS = {  # per-point overrides of the scale's student budget, and how the results file states them
    "smoke": ([], "the smoke scale's budget"),
    "small": (["base.train.max_steps=200", "glue.finetune.epochs=3"],
              "each point distilled for 200 steps x 16 rows (not the scale's 300) and fine-tuned for 3 epochs (not the "
              "scale's 1: after 1 epoch the 3-layer students scored 53-60% on SST-2 dev, about chance)"),
    "paper": (["base.student.num_layers=6", "base.train.max_steps=20000", "base.train.batch_size=64",
               "base.train.micro_batch_size=64", "base.train.mixed_precision=bf16", "base.train.save_every=2000",
               "base.train.eval_every=2000"], "6-layer students, 20,000 steps x 64 rows in bf16 per point")}


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, "electra_ablation", table=False, distill_seeds=True)
    for name in ("b1", "b2", "b3"):
        parser.add_argument(f"--{name}", help=f"comma-separated {name} values (default: the scale's)")
    parser.add_argument("--results", help="also copy the table here, e.g. results/electra_ablation (never at smoke scale)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    default_tasks = {"smoke": None, "small": ["sst2"], "paper": ["rte", "mrpc", "stsb"]}[args.scale]
    s = setup_from_args(args, default_tasks, kinds=("electra",), workdir=out / "setup")
    overrides = [f"base.teacher={s.electra_teacher}", f"base.generator.path={s.electra_generator}",
                 f"base.data.corpus={s.corpus}", *("base." + o for o in s.student_train),
                 f"glue.tasks={s.tasks}", f"glue.lrs={s.grid.lrs}", f"glue.batch_sizes={s.grid.batch_sizes}",
                 f"glue.seeds={s.grid.seeds}", f"glue.finetune.epochs={s.grid.finetune.epochs}",
                 f"glue.finetune.task_epochs={s.grid.finetune.task_epochs}",
                 f"glue.finetune.max_len={s.grid.finetune.max_len}",
                 f"glue.finetune.max_train_examples={s.grid.finetune.max_train_examples}",
                 f"distill_seeds={s.distill_seeds}"]
    if s.glue_dir:
        overrides.append(f"glue.glue_dir={s.glue_dir}")
    budget, budget_text = BUDGETS[s.scale]
    overrides += budget
    for name, default in zip(("b1", "b2", "b3"), GRIDS[s.scale]):
        values = getattr(args, name) or default
        if values:
            overrides.append(f"{name}=[{values}]")
    cfg = load_config(AblationConfig, HERE / "configs" / "electra_ablation.yaml", overrides)
    command = "python recipes/electra_ablation.py " + " ".join(argv)
    ablate(cfg, out / "points", command=command)
    results = Path(args.results) if args.results else None
    if results:
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "points" / "heatmap.png", results / ".heatmap.png.tmp")
        (results / ".heatmap.png.tmp").replace(results / "heatmap.png")
        saved = json.loads((out / "points" / "ablation.json").read_text())
        atomic_write_text(results / "ablation.json", json.dumps(portable_paths(saved), indent=1))
        table = (out / "points" / "ablation.md").read_text()
        atomic_write_text(results / "ablation.md", table + f"\nSetup: {budget_text}; fine-tuned on {', '.join(s.tasks)}; "
                          f"teachers, text and fine-tuning otherwise as the scale says ({s.description}). All "
                          f"overrides, in order (later ones win): {portable(' '.join(overrides))}.\n\n"
                          f"Command: `{portable(command)}`; "
                          f"wall time {time.perf_counter() - t0:.0f} s; commit, hardware and date in ablation.json's "
                          "provenance.\n")
    print((out / "points" / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
