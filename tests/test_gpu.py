"""Mixed precision on a CUDA GPU: fp16 overflow is skipped and counted by the GradScaler, bf16 trains.

Skipped without a GPU (CI has none); run on a lent GPU with `python -m pytest tests/test_gpu.py`.
"""
from __future__ import annotations

import math

import pytest
import torch

from helpers import tiny_pretrain_config
from kd_core import pretrain
from kd_core.data import MaskingCollator, open_corpus
from kd_core.engine import Engine
from kd_core.metrics_log import read_metrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class OverflowOnce(pretrain.MaskedLMObjective):
    """A finite loss whose fp16 gradients overflow on one call: only the GradScaler can catch it."""

    def __init__(self, student, bad_call: int, weights):
        super().__init__(student, weights)
        self.bad_call, self.calls = bad_call, 0

    def forward(self, batch):
        terms = super().forward(batch)
        self.calls += 1
        if self.calls == self.bad_call:
            terms["mlm"] = terms["mlm"] * 1e30
        return terms


def test_fp16_overflow_is_skipped_and_counted(tiny_corpus, tiny_tokenizer, tmp_path):
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=6, log_every=1, micro_batch_size=8, mixed_precision="fp16")
    model = pretrain.build_model(cfg, tiny_tokenizer)
    rows = open_corpus(tiny_corpus, tiny_tokenizer)
    engine = Engine(cfg.train, OverflowOnce(model, bad_call=3, weights=cfg.loss_weights), rows,
                    MaskingCollator.from_tokenizer(cfg.masking, tiny_tokenizer), tmp_path / "run", cfg,
                    tokenizer=tiny_tokenizer)
    snapshots = {}
    original_step = engine.step

    def spy(micro):
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out = original_step(micro)
        snapshots[engine.step_count] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        return out

    engine.step = spy
    engine.fit()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    assert [r["skipped/overflow"] for r in records] == [0, 0, 1, 1, 1, 1]
    assert snapshots[2] is True  # the overflowing step (the third) changed nothing
    assert snapshots[1] is False and snapshots[3] is False
    assert records[2]["loss_scale"] == records[1]["loss_scale"] / 2  # the scaler backed off
    assert records[-1]["skipped/nonfinite"] == 0


def test_bf16_trains_on_gpu(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny_pretrain_config(tiny_corpus, mixed_precision="bf16", max_steps=20), str(out))
    train = [r for r in read_metrics(out / "metrics.jsonl") if "loss/total" in r]
    assert all(math.isfinite(r["loss/total"]) for r in train)
    assert train[-1]["loss/mlm"] < train[0]["loss/mlm"]
