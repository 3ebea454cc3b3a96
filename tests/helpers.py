"""Small builders shared by tests."""
from __future__ import annotations

from pathlib import Path

from kd_core.config import dump_config, load_config
from kd_core.pretrain import PretrainConfig


def tiny_pretrain_config(corpus: Path, **train) -> PretrainConfig:
    overrides = [f"data.corpus={corpus}", "model.arch.num_hidden_layers=2", "model.arch.hidden_size=32",
                 "model.arch.num_attention_heads=2", "model.arch.intermediate_size=64",
                 "model.arch.hidden_dropout_prob=0.0", "model.arch.attention_probs_dropout_prob=0.0",
                 "train.batch_size=8", "train.micro_batch_size=4", "train.lr=1e-3", "train.max_steps=12",
                 "train.log_every=2", "train.warmup_steps=2"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(PretrainConfig, overrides=overrides)


def write_config(cfg, path: Path) -> Path:
    path.write_text(dump_config(cfg))
    return path


def anon_rss() -> int:
    """Anonymous resident memory of this process in bytes (Linux). Memory-mapped file pages are
    not counted: they are page cache the kernel can drop, not a copy of the corpus in our heap."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def tiny_bert_teacher(directory: Path, tokenizer, layers: int = 4, hidden: int = 32, heads: int = 2, seed: int = 0,
                      dropout: float = 0.0):
    """A random BertForMaskedLM saved with its tokenizer (exercises the real loading path). Students
    copy its config: dropout=0.1 (the BERT default) gives them dropout too."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                       num_attention_heads=heads, intermediate_size=hidden * 2,
                                       max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                                       initializer_range=0.2,  # peaked output distributions, not uniform
                                       hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def tiny_electra(directory: Path, tokenizer, layers: int = 4, hidden: int = 32, embedding: int = 16, seed: int = 0,
                 dropout: float = 0.0):
    """A random ElectraForPreTraining discriminator and a small generator, saved with the tokenizer."""
    import torch
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), embedding_size=embedding, max_position_embeddings=64,
                  pad_token_id=tokenizer.pad_token_id, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                  initializer_range=0.2)
    disc = ElectraForPreTraining(ElectraConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                               intermediate_size=2 * hidden, **common))
    gen = ElectraForMaskedLM(ElectraConfig(hidden_size=hidden // 4, num_hidden_layers=2, num_attention_heads=1,
                                           intermediate_size=hidden // 2, **common))
    disc.save_pretrained(directory / "discriminator")
    gen.save_pretrained(directory / "generator")
    for d in ("discriminator", "generator"):
        tokenizer.save_pretrained(directory / d)
    return disc, gen
