"""python -m bert_kd extract | distill

  extract  --teacher T --layers 0,2,4,7,9,11 --output DIR [--arch same|distilbert] [--overwrite]
  distill  --config recipes/configs/NAME.yaml [--set section.key=value ...] --output-dir DIR [--resume]
"""
from __future__ import annotations

import argparse
import json
import sys

from kd_core.cli import add_run_arguments, run_and_report
from kd_core.config import load_config
from kd_core.files import atomic_dir, check_model_output, commit_dir
from kd_core.student import StudentConfig, build_student, load_masked_lm

from .distill import DistilConfig, run


EXTRACT_REPORT = "extract.json"  # written beside the student: marks a folder extract may --overwrite


def extract(args) -> None:
    from transformers import AutoTokenizer

    out = check_model_output(args.output, {"--teacher": args.teacher}, args.overwrite, (EXTRACT_REPORT,))
    layers = [int(x) for x in args.layers.split(",")] if "," in args.layers or args.layers.isdigit() else args.layers
    n = len(layers) if isinstance(layers, list) else args.num_layers
    teacher = load_masked_lm(args.teacher)
    student, _, report = build_student(teacher, StudentConfig(arch=args.arch, num_layers=n, layers=layers))
    report = {k: v for k, v in report.items() if k != "copied"}
    tmp = atomic_dir(out)
    student.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(args.teacher).save_pretrained(tmp)
    (tmp / EXTRACT_REPORT).write_text(json.dumps({"teacher": args.teacher, **report}, indent=1))
    commit_dir(tmp, out)
    print(json.dumps(report, indent=1))
    print(f"student with {n} layers saved to {args.output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bert_kd")
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", help="build a student from a teacher's layers and save it")
    e.add_argument("--teacher", required=True)
    e.add_argument("--layers", required=True, help="0-based teacher layers (0,2,4,7,9,11) or a preset name")
    e.add_argument("--num-layers", type=int, default=6, help="student depth when --layers is a preset")
    e.add_argument("--arch", default="same", choices=["same", "distilbert"])
    e.add_argument("--output", required=True, help="a new folder (or one extract wrote, with --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace a student extract wrote before")
    d = sub.add_parser("distill", help="task-agnostic distillation")
    add_run_arguments(d, "teacher, student, data, masking, loss, train, loss_weights")
    args = parser.parse_args(argv)
    if args.command == "extract":
        return run_and_report(lambda: extract(args) or {}, args.output)
    return run_and_report(lambda: run(load_config(DistilConfig, args.config, args.overrides), args.output_dir,
                                      args.resume, args.overwrite), args.output_dir)

if __name__ == "__main__":
    sys.exit(main())
