"""python -m kd_core.compress prune|quantize ... (see kd_core/compress/__init__.py)."""
from __future__ import annotations

import argparse
import sys

from ..cli import exit_code_of
from .prune import PruneConfig, prune
from .quantize import QuantizeConfig, run_quantize


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m kd_core.compress", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    p = commands.add_parser("prune", help="remove attention heads and FFN neurons, recovering by distillation")
    p.add_argument("--model", required=True, help="a directory saved with save_pretrained (a pruned one too)")
    p.add_argument("--output", required=True)
    p.add_argument("--target-heads", type=float, default=0.0, help="share of the heads to remove, e.g. 0.5")
    p.add_argument("--target-ffn", type=float, default=0.0, help="share of the FFN neurons to remove")
    p.add_argument("--target-params", type=float, default=0.0,
                   help="share of all parameters to remove instead (heads and neurons at one rate)")
    p.add_argument("--importance", choices=("task", "kl"), default="task",
                   help="task: the gold-label loss; kl: self-supervised, against the unpruned model")
    p.add_argument("--task", default="", help="GLUE task the model is fine-tuned on (e.g. sst2)")
    p.add_argument("--glue-dir", help="GLUE folders (default: the hub)")
    p.add_argument("--corpus", default="", help="a prepared corpus (MLM models, ELECTRA discriminators)")
    p.add_argument("--batches", type=int, default=8, help="batches per importance estimate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=1, help="pruning steps to reach the target")
    p.add_argument("--recover-steps", type=int, default=0, help="distillation steps after each pruning step")
    p.add_argument("--recover-lr", type=float, default=5e-5)
    p.add_argument("--per-layer", action="store_true", help="the same share in every layer (uniform FFN size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")

    q = commands.add_parser("quantize", help="int8 dynamic quantization of the Linear layers (CPU)")
    q.add_argument("--model", required=True)
    q.add_argument("--output", required=True)
    q.add_argument("--task", default="", help="a GLUE task: report fp32 and int8 dev scores")
    q.add_argument("--glue-dir")
    q.add_argument("--max-len", type=int, default=128)
    q.add_argument("--overwrite", action="store_true")
    return top


def summary(report: dict) -> str:
    if "history" in report:
        last = report["history"][-1]
        return (f"pruned: {report['params_before']:,} -> {report['params_after']:,} parameters; heads per layer "
                f"{last['heads']}; FFN sizes {last['ffn']}; plain from_pretrained loads it: "
                f"{'yes' if report['loads_with_from_pretrained'] else 'no, use kd_core.compress.structure.load_pruned'}")
    return (f"int8: {report['fp32_bytes']:,} -> {report['bytes']:,} bytes of weights"
            + (f"; dev fp32 {report['dev']['fp32']} vs int8 {report['dev']['int8']}" if "dev" in report else ""))


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    command = args.pop("command")
    run = (lambda: prune(PruneConfig(**args))) if command == "prune" else (lambda: run_quantize(QuantizeConfig(**args)))
    return exit_code_of(lambda: print(summary(run())))


if __name__ == "__main__":
    sys.exit(main())
