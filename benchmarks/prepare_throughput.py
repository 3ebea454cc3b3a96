"""Corpus preparation throughput (tokens/s) of `kd_core.data.prepare`, end to end and per stage.

python benchmarks/prepare_throughput.py [--input DIR_OR_FILES] [--tokenizer DIR] [--num-proc 1 2]
Defaults: ../shared/data/corpus and the all-MiniLM-L6-v2 tokenizer. Writes JSON to --results.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from kd_core.assets import minilm_dir
from kd_core.data import PrepareConfig, prepare
from kd_core.data.clean import CleanConfig, Cleaner
from kd_core.data.prepare import load_tokenizer, tokenize_documents
from kd_core.data.sources import read_documents, text_files
from kd_core.provenance import portable

ROOT = Path(__file__).resolve().parents[1]


def stage_times(inputs: list[str], tokenizer_path: str) -> dict[str, float]:
    t0 = time.perf_counter()
    docs = [d for f in text_files(inputs) for d in read_documents(f)]
    t1 = time.perf_counter()
    cleaner = Cleaner(CleanConfig())
    cleaned = [c for c in map(cleaner.document, docs) if c]
    t2 = time.perf_counter()
    tok = load_tokenizer(tokenizer_path)
    n_tokens = sum(len(ids) for i in range(0, len(cleaned), 256) for ids in tokenize_documents(tok, cleaned[i:i + 256]))
    t3 = time.perf_counter()
    return {"read_s": t1 - t0, "clean_s": t2 - t1, "tokenize_s": t3 - t2, "tokens": n_tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", nargs="*", default=[str(ROOT.parent / "shared" / "data" / "corpus")])
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--num-proc", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--results", default=str(ROOT / "results" / "bench_prepare.json"))
    args = parser.parse_args()
    tokenizer = args.tokenizer or str(minilm_dir())
    result = {"command": portable("python benchmarks/prepare_throughput.py " + " ".join(os.sys.argv[1:])),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=ROOT).stdout.strip(),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "inputs": [portable(path) for path in args.input], "tokenizer": portable(str(tokenizer)),
              "max_len": args.max_len, "runs": []}
    result["stages_single_process"] = stage_times(args.input, tokenizer)
    for n in args.num_proc:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            stats = prepare(PrepareConfig(tokenizer=tokenizer, inputs=args.input, output=f"{tmp}/out",
                                          max_len=args.max_len, num_proc=n))
            wall = time.perf_counter() - t0
        result["runs"].append({"num_proc": n, "wall_s": round(wall, 2), "tokens": stats["tokens"],
                               "rows": stats["rows"], "mean_row_length": round(stats["mean_row_length"], 2),
                               "tokens_per_s": round(stats["tokens"] / wall)})
        print(json.dumps(result["runs"][-1]))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1))
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
