"""python -m kd_core.glue --model DIR --tasks rte,mrpc,... --glue-dir DIR --output-dir DIR [grid options]
                       [--teacher DIR --distill pred|two-stage]

Fine-tunes the model on each task over a grid of learning rates x batch sizes with N seeds per cell
(resumable: finished runs are loaded, never redone), selects the cell by its score (the mean over seeds, kd_core.glue.results), and
writes results.json (every metric, per seed, per cell, the chosen cell, wall times, provenance) and
results.md. Without --glue-dir the tasks come from the Hugging Face `nyu-mll/glue` dataset.
"""
from __future__ import annotations

import argparse
import sys

from ..cli import exit_code_of
from ..errors import UserError
from .distill import TaskDistillConfig
from .finetune import FinetuneConfig
from .grid import GridConfig, run_grid
from .tasks import get_task


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]  # empty: run_grid says what to give, in one line


def task_epochs(text: str) -> dict[str, float]:
    """'stsb=3,mrpc=2' -> {'stsb': 3.0, 'mrpc': 2.0}."""
    pairs = [item.split("=") for item in text.split(",") if item]
    try:
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:  # a pair without one '=' or a value that is not a number
        raise UserError(f"--task-epochs '{text}': give task=epochs pairs, e.g. stsb=3,mrpc=2") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_core.glue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    grid, ft, kd = GridConfig(), FinetuneConfig(), TaskDistillConfig()  # every default comes from the dataclasses
    parser.add_argument("--model", required=True, help="a checkpoint directory or hub name (with tokenizer)")
    parser.add_argument("--tasks", required=True, help="comma-separated: cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli")
    parser.add_argument("--glue-dir", help="standard GLUE layout, e.g. ../shared/data/glue")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--label", help="row name in the table (default: the model folder's name)")
    parser.add_argument("--lrs", type=floats, default=grid.lrs)
    parser.add_argument("--batch-sizes", type=ints, default=grid.batch_sizes)
    parser.add_argument("--seeds", type=int, default=grid.seeds)
    parser.add_argument("--epochs", type=float, default=ft.epochs)
    parser.add_argument("--task-epochs", default="", help="per task, over --epochs: stsb=3,mrpc=2")
    parser.add_argument("--max-len", type=int, default=ft.max_len)
    parser.add_argument("--warmup-ratio", type=float, default=ft.warmup_ratio)
    parser.add_argument("--weight-decay", type=float, default=ft.weight_decay)
    parser.add_argument("--layerwise-lr-decay", type=float, default=ft.layerwise_lr_decay, help="ELECTRA uses 0.8")
    parser.add_argument("--max-train-examples", type=int, default=ft.max_train_examples,
                        help="train on a fixed subset (0: all)")
    parser.add_argument("--mixed-precision", default=ft.mixed_precision, choices=["no", "fp16", "bf16"])
    parser.add_argument("--save-model", action="store_true", help="keep every fine-tuned model in <run>/model (a "
                                                                  "teacher for --teacher or prune --importance task)")
    distill = parser.add_argument_group("task distillation (with --teacher)")
    distill.add_argument("--teacher", help="a model fine-tuned on the task (--save-model made it); '{task}' in the "
                                           "path becomes the task name")
    distill.add_argument("--distill", default=None, choices=["pred", "two-stage"], help=f"default: {kd.mode}")
    distill.add_argument("--pred-loss", default=None, choices=["kl", "mse"], help=f"default: {kd.pred_loss}")
    distill.add_argument("--temperature", type=float, default=None, help=f"default: {kd.temperature}")
    distill.add_argument("--hard-weight", type=float, default=None,
                         help=f"weight of the gold-label loss (default: {kd.loss_weights['hard']})")
    distill.add_argument("--transfer", default=None, help="comma-separated text files of unlabelled examples (one a "
                                                          "line; pairs tab-separated) the teacher labels")
    distill.add_argument("--transfer-unlabelled-train", action="store_true", default=None,
                         help="add the training rows --max-train-examples leaves out, without their labels")
    distill.add_argument("--transfer-max", type=int, default=None, help="at most this many transfer examples (0: all)")
    args = parser.parse_args(argv)
    distill_options = {k: v for k, v in vars(args).items() if k in ("distill", "pred_loss", "temperature", "hard_weight",
                       "transfer", "transfer_unlabelled_train", "transfer_max") and v is not None}
    results = []

    def work() -> None:
        tasks = [get_task(t) for t in args.tasks.split(",") if t]
        finetune = FinetuneConfig(epochs=args.epochs, task_epochs=task_epochs(args.task_epochs), max_len=args.max_len,
                                  warmup_ratio=args.warmup_ratio,
                                  weight_decay=args.weight_decay, layerwise_lr_decay=args.layerwise_lr_decay,
                                  max_train_examples=args.max_train_examples, mixed_precision=args.mixed_precision,
                                  save_model=args.save_model)
        if distill_options and not args.teacher:  # without a teacher they would silently do plain fine-tuning
            raise UserError(f"--{', --'.join(k.replace('_', '-') for k in distill_options)} need(s) --teacher (a model "
                            "fine-tuned on the task); without it kd_core.glue fine-tunes on the labels only")
        distill = TaskDistillConfig(
            mode=args.distill or kd.mode, pred_loss=args.pred_loss or kd.pred_loss,
            temperature=kd.temperature if args.temperature is None else args.temperature,
            loss_weights={**kd.loss_weights, "hard": kd.loss_weights["hard"] if args.hard_weight is None else args.hard_weight},
            transfer=[f for f in (args.transfer or "").split(",") if f],
            transfer_unlabelled_train=bool(args.transfer_unlabelled_train), transfer_max=args.transfer_max or 0)
        grid = GridConfig(lrs=args.lrs, batch_sizes=args.batch_sizes, seeds=args.seeds, finetune=finetune,
                          teacher=args.teacher, distill=distill)
        results.append(run_grid(args.model, tasks, args.glue_dir, grid, args.output_dir,
                                command="python -m kd_core.glue " + " ".join(argv if argv is not None else sys.argv[1:]),
                                label=args.label))

    if code := exit_code_of(work):
        return code
    print(open(f"{args.output_dir}/results.md").read())
    score = results[0].score
    print(f"results: {args.output_dir}/results.json  (GLUE score, mean over tasks of the mean over seeds: "
          + (f"{score:.2f})" if score is not None else f"{results[0].score_note()})"))
    for name, task in results[0].tasks.items() if args.save_model else ():
        print(f"fine-tuned {name} models (a teacher for --teacher): "
              + ", ".join(r.record["model_dir"] for r in task.runs if "model_dir" in r.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
