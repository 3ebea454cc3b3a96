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


def faulty_mlm(student, bad_calls, fault: str = "nan_loss"):
    """The MLM objective with a fault on the calls listed in `bad_calls` (one call per micro-batch):
    nan_loss makes the loss NaN; nan_grad keeps the loss finite and makes its gradient NaN
    (0 * sqrt(0) has the gradient 0 * inf)."""
    import torch

    from kd_core.pretrain import MaskedLMObjective

    class Faulty(MaskedLMObjective):
        calls = 0

        def forward(self, batch):
            terms = super().forward(batch)
            self.calls += 1
            if self.calls in bad_calls and fault == "nan_loss":
                terms["mlm"] = terms["mlm"] * float("nan")
            elif self.calls in bad_calls:
                terms["mlm"] = terms["mlm"] + 0 * torch.sqrt(self.student.get_input_embeddings().weight.sum() * 0)
            return terms

    return Faulty(student, {"mlm": 1.0})


def engine_on_corpus(cfg, objective, tokenizer, corpus: Path, out: Path, resume: bool = False):
    """An Engine over a prepared corpus, with the config's masking (for tests that hold the objective)."""
    from kd_core.data import MaskingCollator, open_corpus
    from kd_core.engine import Engine

    return Engine(cfg.train, objective, open_corpus(corpus, tokenizer),
                  MaskingCollator.from_tokenizer(cfg.masking, tokenizer), out, cfg, tokenizer=tokenizer, resume=resume)
