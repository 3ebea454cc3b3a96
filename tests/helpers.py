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
