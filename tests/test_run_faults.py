"""Faults around a run: a used or shared output dir, NaN gradients, recovery on --resume."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import engine_on_corpus, faulty_mlm, tiny_pretrain_config, write_config
from kd_core import pretrain
from kd_core.checkpoint import complete_checkpoints
from kd_core.engine import NonFiniteLossError
from kd_core.errors import UserError
from kd_core.metrics_log import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kd_core.pretrain", "--config", str(config), "--output-dir", str(out), *extra]


# ---- a used output dir --------------------------------------------------------------------------
def test_a_dir_that_holds_a_run_is_refused_then_resumed_or_overwritten(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=6, save_every=2), str(out))
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"already holds a run \(checkpoint-4, checkpoint-6.*use --resume.*--overwrite"):
        pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=4), str(out))
    assert (out / "metrics.jsonl").read_text() == before, "a refused run must not touch the old one"
    with pytest.raises(UserError, match="contradict"):
        pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=4), str(out), resume=True, overwrite=True)

    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=4, save_every=2, keep_checkpoints=1), str(out),
                 overwrite=True)
    assert [s for s, _ in complete_checkpoints(out)] == [4]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "lr" in r] == [2, 4]


def test_pruning_keeps_checkpoints_after_the_current_step_and_a_deletion_never_looks_complete(tmp_path):
    from kd_core.checkpoint import STATE_FILE, prune_checkpoints

    for step in (2, 4, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / STATE_FILE).write_text("{}")
    prune_checkpoints(tmp_path, keep=1, up_to_step=4)  # a run resumed at step 4 past a broken checkpoint-8
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [4, 8]
    # a deletion killed half-way: the renamed directory is not a checkpoint, and the next prune clears it
    (tmp_path / "checkpoint-4").rename(tmp_path / "checkpoint-4.deleting")
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [8]
    prune_checkpoints(tmp_path, keep=1, up_to_step=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8"]


def test_resume_falls_back_past_a_broken_checkpoint_and_rewrites_it(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=8, save_every=2)
    pretrain.run(cfg, str(out))
    (out / "checkpoint-8" / "optimizer.pt").write_bytes(b"broken")
    (out / "final").rename(tmp_path / "old-final")
    pretrain.run(cfg, str(out), resume=True)
    printed = capsys.readouterr().out
    assert "skips a broken checkpoint" in printed and "checkpoint-8/optimizer.pt: 6 bytes" in printed
    assert "resumed from" in printed and "at step 6" in printed
    assert [s for s, _ in complete_checkpoints(out)] == [6, 8]
    assert (out / "checkpoint-8" / "optimizer.pt").stat().st_size > 1000
    assert not any(p.name.endswith((".tmp", ".old", ".deleting")) for p in out.iterdir())


def test_no_checkpoint_reads_back_is_one_clear_error(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=2), str(out))
    (out / "checkpoint-2" / "scheduler.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"no checkpoint in .* reads back \(.*checkpoint-2/scheduler.pt: 0 bytes"):
        pretrain.run(tiny_pretrain_config(tiny_corpus, max_steps=4), str(out), resume=True)


def test_a_second_run_on_the_same_dir_fails_at_once_and_the_first_keeps_everything(tiny_corpus, tmp_path):
    config = write_config(tiny_pretrain_config(tiny_corpus, max_steps=100_000, log_every=10, save_every=50),
                          tmp_path / "c.yaml")
    out = tmp_path / "run"
    first = subprocess.Popen(_cmd(config, out), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not complete_checkpoints(out):
        assert first.poll() is None and time.time() < deadline, "the first run never wrote a checkpoint"
        time.sleep(0.05)
    for extra in (["--resume"], ["--overwrite"], []):  # --overwrite must not delete a live run either
        second = subprocess.run(_cmd(config, out, *extra), env=_env(), cwd=ROOT, capture_output=True, text=True)
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.strip().startswith("error: ") and "Traceback" not in second.stderr
        assert f"is in use by another run (pid {first.pid} on" in second.stderr
    assert first.poll() is None, "the first run must survive the attempts"
    first.send_signal(signal.SIGKILL)
    first.wait()
    last = complete_checkpoints(out)[-1][0]
    resumed = subprocess.run(_cmd(config, out, "--resume", "--set", f"train.max_steps={last + 20}"), env=_env(),
                             cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "lr" in r] == list(range(10, last + 21, 10))
    assert f"max_steps: {last + 20}" in (out / "config.yaml").read_text()


def test_a_killed_runs_lock_does_not_block_resume(tiny_corpus, tmp_path):
    config = write_config(tiny_pretrain_config(tiny_corpus, max_steps=400, save_every=20), tmp_path / "c.yaml")
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(config, out), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not complete_checkpoints(out):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / ".lock").exists() and not (out / "final").exists()
    resumed = subprocess.run(_cmd(config, out, "--resume", "--set", "train.max_steps=40"), env=_env(), cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "final" / "model.safetensors").is_file()


# ---- non-finite gradients and recovery ------------------------------------------------------------
def test_a_finite_loss_with_a_nan_gradient_is_skipped_and_counted(tiny_corpus, tiny_tokenizer, tmp_path):
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=4, log_every=1, micro_batch_size=8)
    model = pretrain.build_model(cfg, tiny_tokenizer)
    engine = engine_on_corpus(cfg, faulty_mlm(model, {2}, "nan_grad"), tiny_tokenizer, tiny_corpus, tmp_path / "run")
    engine.fit()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    assert [r["skipped/nonfinite"] for r in records] == [0, 1, 1, 1]
    assert "loss/mlm" not in records[1]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_stop_after_nan_gradients_saves_a_finite_state_and_resume_with_a_lower_lr_recovers(
        tiny_corpus, tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=12, micro_batch_size=8, max_consecutive_nonfinite=2)
    model = pretrain.build_model(cfg, tiny_tokenizer)
    engine = engine_on_corpus(cfg, faulty_mlm(model, {4, 5}, "nan_grad"), tiny_tokenizer, tiny_corpus, out)
    with pytest.raises(NonFiniteLossError, match=r"\['grad_norm'\] were non-finite for 2 consecutive steps.*"
                                                 r"parameters of step 3.*checkpoint-5.*train.lr"):
        engine.fit()
    saved = load_file(out / "checkpoint-5" / "student" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())

    lower = tiny_pretrain_config(tiny_corpus, max_steps=12, micro_batch_size=8, max_consecutive_nonfinite=2, lr=1e-4)
    pretrain.run(lower, str(out), resume=True)
    assert "train.lr: 0.001 -> 0.0001" in capsys.readouterr().out
    lrs = [r["lr"] for r in read_metrics(out / "metrics.jsonl") if "lr" in r and r["step"] > 5]
    assert lrs and max(lrs) <= 1e-4 + 1e-12 and min(lrs) > 0
    assert "lr: 0.0001" in (out / "config.yaml").read_text()
    assert all(math.isfinite(r["loss/mlm"]) for r in read_metrics(out / "metrics.jsonl") if "loss/mlm" in r)
