"""Whole runs of the real CLIs in subprocesses: SIGKILL + --resume, and 2 processes (gloo) vs 1 process.

Tolerances: resume after SIGKILL must be bitwise identical (same process count and thread count give
the same CPU kernels, and every random draw is a function of (seed, step), so any difference is a
bug). The runs use each command's default model settings, dropout on. Two processes average
gradients with an all-reduce whose summation order differs from one process's accumulation, so
parameters agree to float32 rounding: atol 1e-5 after 8 AdamW steps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import write_config
from kd_core.toy import tiny_bert_teacher, tiny_electra
from kd_core.config import load_config
from kd_core.metrics_log import read_metrics
from kd_core.pretrain import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
FAULT_RUN = Path(__file__).with_name("fault_run.py")
TRAIN = ["train.max_steps=24", "train.save_every=4", "train.log_every=2", "train.keep_checkpoints=2",
         "train.batch_size=8", "train.micro_batch_size=4", "train.lr=1e-3", "train.warmup_steps=2"]


def _env(threads: int = 1, **extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(command: list[str], config: Path, out: Path, *extra: str, kill_during_save: str | None = None):
    env = _env(**({"KILL_DURING_SAVE": kill_during_save} if kill_during_save else {}))
    return subprocess.run([sys.executable, str(FAULT_RUN), *command, "--config", str(config), "--output-dir", str(out),
                           *extra], env=env, cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def cli_configs(tiny_corpus, tiny_tokenizer, tmp_path_factory) -> dict[str, tuple[list[str], Path]]:
    """Each CLI with its default model settings (dropout 0.1 everywhere), a few steps long."""
    root = tmp_path_factory.mktemp("kill_configs")
    bert_teacher = root / "bert"
    tiny_bert_teacher(bert_teacher, tiny_tokenizer, dropout=0.1)
    tiny_electra(root / "electra", tiny_tokenizer, dropout=0.1)
    from bert_kd.distill import DistilConfig
    from electra_kd.distill import ElectraRunConfig

    configs = {
        "pretrain": (["kd_core.pretrain"], load_config(PretrainConfig, overrides=[f"data.corpus={tiny_corpus}", *TRAIN])),
        "bert_kd": (["bert_kd", "distill"], load_config(DistilConfig, overrides=[
            f"teacher={bert_teacher}", f"data.corpus={tiny_corpus}", "student.num_layers=2", *TRAIN])),
        "electra_kd": (["electra_kd", "distill"], load_config(ElectraRunConfig, overrides=[
            f"teacher={root / 'electra' / 'discriminator'}", f"data.corpus={tiny_corpus}", "student.num_layers=2",
            "loss.train_generator=true", *TRAIN])),
    }
    return {name: (command, write_config(cfg, root / f"{name}.yaml")) for name, (command, cfg) in configs.items()}


def _losses(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith(("loss/", "eval/", "weighted/")) or k == "step"}
            for r in read_metrics(run / "metrics.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pretrain", "bert_kd", "electra_kd"])
def test_killed_twice_mid_checkpoint_then_resumed_matches_uninterrupted_run(cli_configs, name, tmp_path):
    command, config = cli_configs[name]
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = _cli(command, config, full)
    assert done.returncode == 0, done.stderr[-3000:]

    first = _cli(command, config, killed, kill_during_save="checkpoint-8/optimizer.pt")
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert (killed / "checkpoint-8.tmp").is_dir() and not (killed / "checkpoint-8").exists()
    second = _cli(command, config, killed, "--resume", kill_during_save="checkpoint-16/extras.pt")
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "checkpoint-4 at step 4" in second.stdout
    assert not (killed / "final").exists()

    # the newest complete checkpoint is then damaged on disk: resume names it and falls back to the older one
    newest = killed / "checkpoint-12" / "student" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    last = _cli(command, config, killed, "--resume")
    assert last.returncode == 0, last.stderr[-3000:]
    assert "skips a broken checkpoint" in last.stdout and "checkpoint-12/student/model.safetensors" in last.stdout
    assert "checkpoint-8 at step 8" in last.stdout

    models = ["final/model.safetensors"] + (["generator/model.safetensors"] if name == "electra_kd" else [])
    for model in models:
        a, b = load_file(full / model), load_file(killed / model)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{model}: {key} differs after kills and resumes"
    assert _losses(killed) == _losses(full), "the resumed run's log must equal the uninterrupted run's, line by line"
    assert sorted(p.name for p in killed.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-20",
                                                                                          "checkpoint-24"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_dropout(tiny_corpus, tmp_path):
    cfg = load_config(PretrainConfig, overrides=[f"data.corpus={tiny_corpus}", "train.max_steps=8", "train.batch_size=8",
                                                 "train.micro_batch_size=4", "train.lr=1e-3"])
    config = write_config(cfg, tmp_path / "config.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    cmd = ["-m", "kd_core.pretrain", "--config", str(config), "--output-dir"]
    subprocess.run([sys.executable, *cmd, str(one)], check=True, env=_env(), cwd=ROOT, capture_output=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = subprocess.run(launch + [*cmd, str(two)], env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert json.loads((two / "checkpoint-8" / "trainer_state.json").read_text())["world_size"] == 2
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f"largest parameter difference {worst}"
    init = subprocess.run([sys.executable, *cmd, str(tmp_path / "zero"), "--set", "train.lr=0.0"], env=_env(),
                          cwd=ROOT, capture_output=True)
    assert init.returncode == 0
    moved = max((a[k] - load_file(tmp_path / "zero" / "final" / "model.safetensors")[k]).abs().max().item() for k in a)
    assert moved > 1e-3, "training must move the parameters for the comparison to mean anything"
