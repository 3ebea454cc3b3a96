"""Whole runs in subprocesses: SIGKILL + --resume, and 2 processes (gloo) vs 1 process.

Tolerances: resume after SIGKILL must be bitwise identical (same process count and thread count
give the same CPU kernels and the same data/masking/RNG state, so any difference is a bug). Two
processes average gradients with an all-reduce whose summation order differs from one process's
accumulation, so parameters agree to float32 rounding: atol 1e-5 after 8 AdamW steps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_pretrain_config, write_config

ROOT = Path(__file__).resolve().parents[1]


def _env(threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kd_core.pretrain", "--config", str(config), "--output-dir", str(out), *extra]


def _params(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_corpus, tmp_path):
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=60, save_every=5, log_every=5)
    config = write_config(cfg, tmp_path / "config.yaml")
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(config, full), check=True, env=_env(), cwd=ROOT, capture_output=True)

    proc = subprocess.Popen(_train_cmd(config, killed), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint-10").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before SIGKILL; the test proved nothing"

    resumed = subprocess.run(_train_cmd(config, killed, "--resume"), env=_env(), cwd=ROOT, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a, b = _params(full), _params(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_corpus, tmp_path):
    cfg = tiny_pretrain_config(tiny_corpus, max_steps=8, batch_size=8, micro_batch_size=4)
    config = write_config(cfg, tmp_path / "config.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_train_cmd(config, one), check=True, env=_env(), cwd=ROOT, capture_output=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = subprocess.run(launch + _train_cmd(config, two)[1:], env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert json.loads((two / "checkpoint-8" / "trainer_state.json").read_text())["world_size"] == 2
    assert (two / "checkpoint-8" / "rng-1.pt").exists()
    a, b = _params(one), _params(two)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"largest parameter difference {worst}"
    init = subprocess.run(_train_cmd(config, tmp_path / "zero", "--set", "train.lr=0.0"), env=_env(), cwd=ROOT,
                          capture_output=True)
    assert init.returncode == 0
    moved = max((a[k] - _params(tmp_path / "zero")[k]).abs().max().item() for k in a)
    assert moved > 1e-3, "training must move the parameters for the comparison to mean anything"
