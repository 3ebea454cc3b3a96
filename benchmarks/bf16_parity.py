"""Loss parity of bf16 autocast vs fp32: the same short, real distillation run twice, curves compared.

DistilBERT objective (5 L_ce + 2 L_mlm + L_cos, T = 2, L_ce at every token: the fused vocabulary KL) from a
MiniLM-L6-H384 teacher (all-MiniLM-L6-v2's encoder; its MLM head is new, seeded: an adapted teacher takes
~15 min to build here) to a 3-layer student (layers 0,2,4), on WikiText-2 text from ../shared/data, dropout on,
same seed. Pass: at every logged step |bf16 - fp32| <= TOLERANCE x fp32 for every loss term and the total.

python benchmarks/bf16_parity.py [--steps 40] [--batch 8] [--max-len 64] [--results results/bf16_parity.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from common import ROOT, loadavg, machine
from bert_kd.distill import DistilConfig, run
from kd_core.assets import minilm_dir
from kd_core.config import load_config
from kd_core.data import PrepareConfig, prepare
from kd_core.provenance import portable
from kd_core.metrics_log import read_metrics
from kd_core.student import load_masked_lm

TOLERANCE = 0.02  # relative, per logged step and term: bf16 keeps 8 mantissa bits (~0.4% per rounding)
TEXT = ROOT.parent / "shared" / "data" / "corpus" / "wikitext-2-raw"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--results", default=str(ROOT / "results" / "bf16_parity.json"))
    args = parser.parse_args()
    if not TEXT.exists():
        raise SystemExit(f"{TEXT} not present (real text lives in ../shared/data)")
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="bf16_parity_"))
    prepare(PrepareConfig(tokenizer=str(minilm_dir()), inputs=[str(TEXT)], output=str(work / "corpus"),
                          max_len=args.max_len))
    torch.manual_seed(0)
    load_masked_lm(str(minilm_dir()), new_head=True).save_pretrained(work / "teacher")
    curves = {}
    for precision in ("no", "bf16"):
        cfg = load_config(DistilConfig, overrides=[
            f"teacher={work / 'teacher'}", f"data.corpus={work / 'corpus'}", f"data.tokenizer={minilm_dir()}",
            "student.num_layers=3", "student.layers=0,2,4", f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch}", f"train.micro_batch_size={args.batch}", "train.lr=5e-4",
            "train.warmup_steps=4", "train.log_every=1", "train.save_at_end=false", f"train.mixed_precision={precision}"])
        run(cfg, str(work / precision))
        curves[precision] = [r for r in read_metrics(work / precision / "metrics.jsonl") if "loss/total" in r]
    terms = [k for k in curves["no"][0] if k.startswith("loss/")]
    worst = {k: max(abs(b[k] - a[k]) / abs(a[k]) for a, b in zip(curves["no"], curves["bf16"])) for k in terms}
    speed = {p: sum(r["tokens_per_s"] for r in c[1:]) / (len(c) - 1) for p, c in curves.items()}
    result = {"command": portable("python benchmarks/bf16_parity.py " + " ".join(os.sys.argv[1:])), **info,
              "loadavg_end": loadavg(), "setup": __doc__.split("\n\n")[1], "steps": args.steps, "batch": args.batch,
              "max_len": args.max_len, "tolerance_relative": TOLERANCE, "worst_relative_difference": worst,
              "pass": all(v <= TOLERANCE for v in worst.values()),
              "mean_tokens_per_s_after_step_1": speed,
              "curves": {p: [{k: r[k] for k in ["step", *terms]} for r in c] for p, c in curves.items()}}
    Path(args.results).write_text(json.dumps(result, indent=1))
    for k, v in worst.items():
        print(f"{k:16s} worst relative difference bf16 vs fp32 {v:.4f} (tolerance {TOLERANCE})")
    print(f"tokens/s fp32 {speed['no']:.0f}, bf16 {speed['bf16']:.0f}; pass: {result['pass']}; written to {args.results}")


if __name__ == "__main__":
    main()
