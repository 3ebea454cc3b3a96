"""python -m electra_kd distill | ablate

  distill --config C.yaml [--set section.key=value ...] --output-dir DIR [--resume]
          (b1 = b2 = b3 = 0: ELECTRA pretraining of the student without a teacher)
  ablate  --grid recipes/configs/electra_ablation.yaml --output-dir DIR [--set key=value ...]
"""
from __future__ import annotations

import argparse
import sys

from kd_core.cli import add_run_arguments, run_and_report
from kd_core.config import load_config

from .ablate import AblationConfig, ablate
from .distill import ElectraRunConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m electra_kd")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil (or pretrain) a small ELECTRA discriminator")
    add_run_arguments(d, "teacher, student, generator, data, masking, loss, train")
    a = sub.add_parser("ablate", help="grid over b1/b2/b3, each run evaluated on GLUE")
    a.add_argument("--grid", required=True)
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    if args.command == "distill":
        return run_and_report(lambda: run(load_config(ElectraRunConfig, args.config, args.overrides),
                                          args.output_dir, args.resume, args.overwrite), args.output_dir)
    command = "python -m electra_kd " + " ".join(sys.argv[1:] if argv is None else argv)

    def run_ablation() -> dict:
        ablate(load_config(AblationConfig, args.grid, args.overrides), args.output_dir, command=command)
        print(open(f"{args.output_dir}/ablation.md").read())
        return {}
    return run_and_report(run_ablation, args.output_dir)

if __name__ == "__main__":
    sys.exit(main())
