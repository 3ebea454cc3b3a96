"""python -m kd_core.data prepare --tokenizer PATH_OR_NAME --input FILES_OR_DIRS --max-len 128 --output DIR"""
from __future__ import annotations

import argparse
import json
import sys

from ..cli import exit_code_of
from .clean import CleanConfig
from .prepare import PrepareConfig, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_core.data")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="clean, tokenize, pack and store a corpus")
    p.add_argument("--tokenizer", required=True, help="local directory or hub name of a fast tokenizer")
    p.add_argument("--input", nargs="*", default=[], help="text files or folders of them")
    p.add_argument("--hf-dataset", help="a save_to_disk folder or a hub dataset name")
    p.add_argument("--hf-config", help="the hub dataset's configuration, e.g. wikitext-103-raw-v1")
    p.add_argument("--hf-split", default="train")
    p.add_argument("--text-column", default="text")
    p.add_argument("--format", dest="text_format", default="auto", choices=["auto", "lines", "paragraphs", "wikitext"])
    p.add_argument("--output", required=True)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--mode", default="pack", choices=["pack", "segments"])
    p.add_argument("--min-piece", type=int, default=40)
    p.add_argument("--valid-fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-proc", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-strip-html", action="store_true")
    p.add_argument("--min-chars", type=int, default=15, help="0 keeps short paragraphs")
    p.add_argument("--max-non-alnum", type=float, default=0.10, help="1.0 disables the rule")
    p.add_argument("--no-dedup", action="store_true")
    args = vars(parser.parse_args(argv))
    args.pop("command")
    clean = CleanConfig(strip_html=not args.pop("no_strip_html"), min_chars=args.pop("min_chars"),
                        max_non_alnum=args.pop("max_non_alnum"), dedup=not args.pop("no_dedup"))
    args["inputs"] = args.pop("input")
    stats: dict = {}
    if code := exit_code_of(lambda: stats.update(prepare(PrepareConfig(clean=clean, **args)))):
        return code
    summary = {k: stats[k] for k in ("rows", "tokens", "mean_row_length", "splits", "cleaning",
                                     "wall_seconds", "tokens_per_second")}
    print(json.dumps(summary, indent=1))
    print(f"prepared dataset written to {args['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
