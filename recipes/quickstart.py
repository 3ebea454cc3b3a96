"""The main job, offline on a CPU: real English teachers, distilled 3-layer BERT and ELECTRA students,
all fine-tuned on a labelled task, one table.

python recipes/quickstart.py [--output-dir runs/quickstart] [--smoke] [--results FILE.md]

1. text: ../shared/data/corpus when present, else the vaderSentiment 3.3.2 snippets (PyPI, sha256-checked);
   prepared with the all-MiniLM-L6-v2 tokenizer;
2. teachers (recipes/teachers.py, cached): an MLM teacher and an ELECTRA teacher from all-MiniLM-L6-v2;
3. students: 3 layers each (teacher layers 0,2,4): DistilBERT objective (5 L_ce + 2 L_mlm + L_cos) and
   ELECTRA distillation (L_ce + L_mse + L_cos + L_kl) with the teacher's frozen generator; and the control,
   the same layers truncated from each teacher and not distilled;
4. task: movie-review sentiment (Pang & Lee snippets from vaderSentiment, score > 0 = positive), or SST-2
   from ../shared/data/glue in --smoke; every model fine-tuned through the GLUE harness;
5. table: parameters, CPU batch-1 latency (models in turns, median), dev accuracy over 3 fine-tuning seeds
   (each student: 2 distillation seeds x 3, pooled), accuracy retained vs its teacher, distilled vs truncated by
   paired bootstrap, wall times.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = 3  # fine-tuning seeds per model (smoke: 1)
DISTILL_SEEDS = 2  # distillation seeds per student (train.seed 0, 1), their fine-tuning runs pooled into one row
TRAIN_EXAMPLES = 2000  # fine-tuning subset: 3 seeds x 8 fine-tuned models inside 30 minutes on 2 cores (3000: ~31 min)

from bert_kd.distill import DistilConfig, run as run_bert_kd
from kd_core.latency import interleaved_latency
from electra_kd.distill import ElectraRunConfig, run as run_electra_kd
from kd_core.assets import fetch_vader
from kd_core.files import atomic_write_text
from kd_core.glue.compare import compare_results, markdown, pool_seeds, seed_run_dirs
from kd_core.student import StudentConfig, save_untrained_student
from transformers import AutoModelForMaskedLM, ElectraForPreTraining
from kd_core.plot import loss_curves
from kd_core.config import load_config
from kd_core.glue.finetune import FinetuneConfig
from kd_core.glue.grid import GridConfig, provenance, run_grid
from kd_core.glue.tasks import get_task
from scales import SHARED, SMALL_BATCH, SMALL_TEACHER_STEPS, compute_seconds, small_corpus, small_teacher
from kd_core.cli import script_exit


def movie_review_task(out: Path) -> tuple[Path, str]:
    """vaderSentiment's movie-review snippets as an SST-2-shaped binary task (85/15 split, seed 0)."""
    rows = []
    for line in (fetch_vader() / "movie_reviews.tsv").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and float(parts[1]) != 0:
            rows.append(f"{parts[2].strip()}\t{int(float(parts[1]) > 0)}")
    random.Random(0).shuffle(rows)
    cut = int(0.85 * len(rows))
    for split, part in (("train", rows[:cut]), ("dev", rows[cut:])):
        (out / "SST-2").mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "SST-2" / f"{split}.tsv", "sentence\tlabel\n" + "\n".join(part) + "\n")
    return out, f"movie-review sentiment ({cut} train / {len(rows) - cut} dev snippets, vaderSentiment 3.3.2)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/quickstart")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--results", help="where the table goes (default: <output-dir>/quickstart.md; the committed "
                                          "one is results/quickstart.md)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.output_dir)
    smoke = args.smoke
    steps = 4 if smoke else SMALL_TEACHER_STEPS
    walls: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        walls[name] = time.perf_counter() - t0
        return value

    print("[1/5] corpus", flush=True)
    corpus, text_source = small_corpus(out)

    print("[2/5] teachers (cached after the first run)", flush=True)
    mlm_teacher = timed("MLM teacher adaptation", lambda: small_teacher("mlm", corpus, steps))
    electra_teacher = timed("ELECTRA teacher adaptation", lambda: small_teacher("electra", corpus, steps))

    print("[3/5] students", flush=True)
    common = [f"data.corpus={corpus}", "student.num_layers=3", "student.layers=every_other",
              f"train.max_steps={steps}", "train.lr=2e-4", "train.warmup_ratio=0.1", "train.log_every=10",
              "train.eval_every=0", *SMALL_BATCH]
    students = {"BERT": (run_bert_kd, DistilConfig, [f"teacher={mlm_teacher / 'final'}", "loss.restrict_ce_to_mask=true"]),
                "ELECTRA": (run_electra_kd, ElectraRunConfig, [f"teacher={electra_teacher / 'final'}",
                                                               f"generator.path={electra_teacher / 'generator'}"])}
    student_dirs = {family: seed_run_dirs(out / f"{family.lower()}_student", DISTILL_SEEDS) for family in students}
    for family, (run, config_cls, own) in students.items():
        for seed, run_dir in enumerate(student_dirs[family]):
            timed(f"{family} student distillation seed {seed}", lambda: run(load_config(config_cls, overrides=[
                *own, *common, f"train.seed={seed}"]), str(run_dir), resume=True))
    # the control that gives "distilled" its meaning: the same 3 teacher layers, fine-tuned without distillation
    layers_0_2_4 = StudentConfig(num_layers=3, layers="every_other")
    bert_truncated = save_untrained_student(mlm_teacher / "final", layers_0_2_4, out / "bert_truncated", AutoModelForMaskedLM)
    electra_truncated = save_untrained_student(electra_teacher / "final", layers_0_2_4, out / "electra_truncated",
                                               ElectraForPreTraining)

    print("[4/5] fine-tuning on the labelled task", flush=True)
    if smoke and (SHARED / "glue" / "SST-2").is_dir():
        glue_dir, task_source = str(SHARED / "glue"), "SST-2 (../shared/data/glue; smoke: 64 training sentences)"
    else:
        task_dir, task_source = movie_review_task(out / "task")
        glue_dir = str(task_dir)
    finetune = FinetuneConfig(epochs=1.0, max_len=64, max_train_examples=64 if smoke else TRAIN_EXAMPLES)
    grid = GridConfig(lrs=[1e-4], batch_sizes=[32], seeds=1 if smoke else SEEDS, finetune=finetune)
    models = [("MLM teacher (6 layers)", [mlm_teacher / "final"], None),
              ("BERT truncated, not distilled (3 layers)", [bert_truncated], "MLM teacher (6 layers)"),
              ("BERT student, distilled (3 layers)", [d / "final" for d in student_dirs["BERT"]], "MLM teacher (6 layers)"),
              ("ELECTRA teacher (6 layers)", [electra_teacher / "final"], None),
              ("ELECTRA truncated, not distilled (3 layers)", [electra_truncated], "ELECTRA teacher (6 layers)"),
              ("ELECTRA student, distilled (3 layers)", [d / "final" for d in student_dirs["ELECTRA"]],
               "ELECTRA teacher (6 layers)")]

    def finetune_pooled(label: str, paths: list[Path]) -> dict:
        parts = [run_grid(str(path), [get_task("sst2")], glue_dir, grid,
                          out / "glue" / (path.parent.name if path.name == "final" else path.name), label=label)
                 for path in paths]
        return parts[0] if len(parts) == 1 else pool_seeds(parts, label)

    rows, results = {}, {}
    for label, paths, teacher in models:
        results[label] = timed(f"fine-tune {label}", lambda: finetune_pooled(label, paths))
        accuracy = results[label]["tasks"]["sst2"]["metrics"]["accuracy"]
        rows[label] = {"accuracy": accuracy["mean"], "std": accuracy["std"], "teacher": teacher, "path": str(paths[0]),
                       "runs": f"{len(paths)} x {grid.seeds}" if len(paths) > 1 else f"{grid.seeds}"}

    print("[5/5] size and CPU batch-1 latency", flush=True)
    dev = [(line.split("\t")[0], None) for line in
           (Path(glue_dir) / "SST-2" / "dev.tsv").read_text().splitlines()[1:][: (20 if smoke else 200)]]
    passes = 2 if smoke else 5
    for group in ([label for label in rows if label.startswith("MLM") or label.startswith("BERT")],
                  [label for label in rows if label.startswith("ELECTRA")]):  # each model in turns with its teacher
        speeds = interleaved_latency({label: rows[label]["path"] for label in group}, dev, passes)
        for label in group:
            rows[label].update(params_m=speeds[label]["params_m"], latency_ms=speeds[label]["ms_per_pair"],
                               speedup=speeds[label]["speedup"])

    lines = [f"| model | parameters (M) | CPU batch-1 latency (ms, median of {passes} interleaved passes) | "
             "speed-up vs teacher | runs (distillation x fine-tuning seeds) | dev accuracy (mean ± std over runs) | "
             "retained vs teacher |", "|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        retained = f"{100 * row['accuracy'] / rows[row['teacher']]['accuracy']:.1f}%" if row["teacher"] else "–"
        speedup = f"{row['speedup']:.2f}x" if row["teacher"] else "–"
        lines.append(f"| {label} | {row['params_m']:.1f} | {row['latency_ms']:.2f} | {speedup} | {row['runs']} | "
                     f"{row['accuracy']:.1f} ± {row['std']:.1f} | {retained} |")
    lines += ["", "Distilled vs truncated (the claim this table makes), paired bootstrap over dev examples and seeds:"]
    for family in ("BERT", "ELECTRA"):
        comparison = compare_results(results[f"{family} student, distilled (3 layers)"],
                                     results[f"{family} truncated, not distilled (3 layers)"])
        lines += ["", markdown(comparison, f"{family} distilled", f"{family} truncated")]
    total = time.perf_counter() - t_start
    target = Path(args.results) if args.results else out / "quickstart.md"
    prov = provenance("python recipes/quickstart.py " + " ".join(sys.argv[1:] if argv is None else argv))
    text = "\n".join([
        f"# Quickstart: distilled BERT and ELECTRA students vs their teachers{' (SMOKE)' if smoke else ''}", "",
        *lines, "",
        f"Distillation text: {text_source}; task: {task_source}; {steps} steps for each teacher adaptation and each "
        f"student (batch 16 x 64 tokens); fine-tuning 1 epoch on {finetune.max_train_examples} training examples, "
        f"lr 1e-4, batch 32, seeds 0-{grid.seeds - 1}, evaluated on the full dev set. Each student is distilled with "
        f"{DISTILL_SEEDS} seeds (train.seed 0-{DISTILL_SEEDS - 1}; latency and loss curves: seed 0), its row and its "
        f"comparison pool the {DISTILL_SEEDS} x {grid.seeds} fine-tuning runs, so the intervals cover distillation seeds, "
        "fine-tuning seeds and dev examples.",
        "Wall times of this process (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()) + f"; total {total:.0f}. "
        "Compute recorded by the runs themselves, summed over resumed parts (a rerun over finished runs reads "
        "theirs): " + ", ".join(f"{k} {v}" for k, v in compute_seconds(out, list(results.values())).items()) + ".",
        f"Loss curves of both students: {Path(target).with_suffix('.png').name}; inspect every run: "
        f"tensorboard --logdir {out}",
        "", "Provenance: " + json.dumps(prov), ""])
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    loss_curves([student_dirs["BERT"][0], student_dirs["ELECTRA"][0]], target.with_suffix(".png"),
                ["BERT student", "ELECTRA student"])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
