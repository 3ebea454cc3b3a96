"""python -m kd_core.glue --model DIR --tasks rte,mrpc,... --glue-dir DIR --output-dir DIR [grid options]
                       [--teacher DIR --distill pred|two-stage]

Fine-tunes the model on each task over a grid of learning rates x batch sizes with N seeds per cell
(resumable: finished runs are loaded, never redone), selects the cell by the median dev score, and
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
    parser.add_argument("--model", required=True, help="a checkpoint directory or hub name (with tokenizer)")
    parser.add_argument("--tasks", required=True, help="comma-separated: cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte,wnli")
    parser.add_argument("--glue-dir", help="standard GLUE layout, e.g. ../shared/data/glue")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--label", help="row name in the table (default: the model folder's name)")
    parser.add_argument("--lrs", type=floats, default=[1e-5, 5e-5, 1e-4])
    parser.add_argument("--batch-sizes", type=ints, default=[16, 32])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--task-epochs", default="", help="per task, over --epochs: stsb=3,mrpc=2")
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--layerwise-lr-decay", type=float, default=1.0, help="ELECTRA fine-tuning uses 0.8")
    parser.add_argument("--max-train-examples", type=int, default=0, help="train on a subset (0: all)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--teacher", help="fine-tuned teacher to distil from; '{task}' in it becomes the task name")
    parser.add_argument("--distill", default="pred", choices=["pred", "two-stage"])
    parser.add_argument("--pred-loss", default="kl", choices=["kl", "mse"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hard-weight", type=float, default=0.0, help="weight of the gold-label loss")
    args = parser.parse_args(argv)
    results: dict = {}

    def work() -> None:
        tasks = [get_task(t) for t in args.tasks.split(",") if t]
        finetune = FinetuneConfig(epochs=args.epochs, task_epochs=task_epochs(args.task_epochs), max_len=args.max_len,
                                  warmup_ratio=args.warmup_ratio,
                                  weight_decay=args.weight_decay, layerwise_lr_decay=args.layerwise_lr_decay,
                                  max_train_examples=args.max_train_examples, mixed_precision=args.mixed_precision)
        distill = TaskDistillConfig(mode=args.distill, pred_loss=args.pred_loss, temperature=args.temperature,
                                    loss_weights={**TaskDistillConfig().loss_weights, "hard": args.hard_weight})
        grid = GridConfig(lrs=args.lrs, batch_sizes=args.batch_sizes, seeds=args.seeds, finetune=finetune,
                          teacher=args.teacher, distill=distill)
        results.update(run_grid(args.model, tasks, args.glue_dir, grid, args.output_dir,
                                command="python -m kd_core.glue " + " ".join(argv if argv is not None else sys.argv[1:]),
                                label=args.label))

    if code := exit_code_of(work):
        return code
    print(open(f"{args.output_dir}/results.md").read())
    macro = results.get("glue_macro")
    print(f"results: {args.output_dir}/results.json  (GLUE macro "
          + (f"{macro:.2f})" if macro is not None else f"{results.get('glue_macro_reason', 'not computed')})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
