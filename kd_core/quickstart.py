"""`make quickstart`: prepare a real English corpus and train a small BERT on it through the engine.

Text: ../shared/data/corpus (WikiText-2 + Gutenberg) when present, else the vaderSentiment
snippets fetched from PyPI. Tokenizer: all-MiniLM-L6-v2's (bert-base-uncased vocabulary).
SMOKE=1 (or --smoke) shrinks everything to a run of seconds, which the tests use.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .assets import minilm_dir, vader_text_file
from .config import load_config
from .data import PrepareConfig, prepare
from .pretrain import PretrainConfig, run

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus"


def corpus_inputs() -> tuple[list[str], str, str]:
    """(inputs, text format, description) of the quickstart's corpus."""
    if SHARED_CORPUS.is_dir():
        return [str(SHARED_CORPUS)], "auto", f"{SHARED_CORPUS} (WikiText-2 raw valid/test + Gutenberg)"
    path = vader_text_file()
    return [str(path)], "lines", f"{path} (vaderSentiment 3.3.2 snippets from PyPI, one per line)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_core.quickstart")
    parser.add_argument("--output-dir", default="runs/quickstart")
    parser.add_argument("--smoke", action="store_true", default=os.environ.get("SMOKE") == "1")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    t0 = time.perf_counter()

    inputs, text_format, described = corpus_inputs()
    print(f"[1/2] preparing corpus from {described}")
    stats = prepare(PrepareConfig(tokenizer=str(minilm_dir()), inputs=inputs, text_format=text_format,
                                  output=str(out / "corpus"), max_len=64 if args.smoke else 128, overwrite=True))
    print(f"      {stats['rows']} rows, {stats['tokens']} tokens, mean row length {stats['mean_row_length']:.1f}")

    steps = 6 if args.smoke else 300
    cfg = load_config(PretrainConfig, overrides=[
        f"data.corpus={out / 'corpus'}", "model.arch.num_hidden_layers=2", "model.arch.hidden_size=128",
        "model.arch.num_attention_heads=2", "model.arch.intermediate_size=512",
        f"train.max_steps={steps}", "train.batch_size=32", "train.micro_batch_size=32", "train.lr=1e-3",
        "train.warmup_ratio=0.1", "train.schedule=cosine", f"train.log_every={2 if args.smoke else 20}",
        f"train.save_every={steps // 2}", f"train.eval_every={steps // 2}"])
    print(f"[2/2] training a 2-layer BERT (masked LM) for {steps} steps")
    summary = run(cfg, str(out / "mlm"))
    minutes = (time.perf_counter() - t0) / 60
    print(f"done in {minutes:.1f} min: train MLM loss {summary.get('loss/mlm', float('nan')):.3f}, "
          f"held-out MLM loss {summary.get('eval/loss/mlm', float('nan')):.3f}")
    print(f"TensorBoard logs: {out / 'mlm' / 'tb'}   (tensorboard --logdir {out / 'mlm' / 'tb'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
