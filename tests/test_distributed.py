"""Distributed training for real, on CPU: `bert_kd distill` and `electra_kd distill` under torchrun and
accelerate launch (2 gloo processes), plain DDP and DeepSpeed ZeRO-2 (DS_ACCELERATOR=cpu), dropout on, 2
micro-batches per process per step; killed with SIGKILL, stopped with SIGTERM or Ctrl-C, and resumed; and
processes that disagree (what they see of the output dir, which checkpoint) stopping with one error line.

Tolerances: a resumed run must end bitwise equal to the uninterrupted run with the same processes (every
random draw is a function of (seed, step)). Two processes sum gradients in another order than one process
accumulating, so they agree with it to float32 rounding: 1e-5 after 12 AdamW steps. Every subprocess has a
timeout: a hang fails the test instead of blocking the suite.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import engine_on_corpus, tiny_pretrain_config, write_config
from kd_core.checkpoint import torch_load
from kd_core.config import ConfigError, load_config
from kd_core.metrics_log import read_metrics
from kd_core.pretrain import MaskedLMObjective
from kd_core.run import run_entries
from kd_core.toy import tiny_bert_teacher, tiny_electra

ROOT = Path(__file__).resolve().parents[1]
FAULT_RUN = Path(__file__).with_name("fault_run.py")
# 12 steps of 8 rows: 2 processes x 2 micro-batches of 2 rows (1 process: 4 micro-batches)
TRAIN = ["train.max_steps=12", "train.save_every=4", "train.log_every=2", "train.keep_checkpoints=2",
         "train.batch_size=8", "train.micro_batch_size=2", "train.lr=1e-3", "train.warmup_steps=2"]
TIMEOUT = 300


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def one_process() -> list[str]:
    return [sys.executable]


def torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def accelerate_ddp() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--main_process_port", _port()]


def accelerate_zero2(*flags: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "recipes" / "accelerate" / "deepspeed_zero2.yaml"), "--num_processes", "2",
            "--main_process_port", _port(), *flags]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(launcher: list[str], command: list[str], config: Path, out: Path, *extra: str, **env: str):
    return subprocess.run([*launcher, str(FAULT_RUN), *command, "--config", str(config), "--output-dir", str(out),
                           *extra], env=_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


def _ok(done) -> None:
    assert done.returncode == 0, done.stderr[-4000:]


def _models(name: str) -> list[str]:
    return ["final/model.safetensors"] + (["generator/model.safetensors"] if name == "electra_kd" else [])


def _largest_difference(a: Path, b: Path, name: str) -> float:
    worst = 0.0
    for model in _models(name):
        x, y = load_file(a / model), load_file(b / model)
        assert x.keys() == y.keys() and all(v.dtype == torch.float32 for v in y.values())
        worst = max(worst, max((x[k] - y[k]).abs().max().item() for k in x))
    return worst


def _error_lines(*outputs: str) -> list[str]:
    return [line for text in outputs for line in text.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def cli(tiny_corpus, tiny_tokenizer, tmp_path_factory) -> dict[str, tuple[list[str], Path]]:
    """Each distillation CLI with its default model settings (dropout 0.1), 12 steps."""
    from bert_kd.distill import DistilConfig
    from electra_kd.distill import ElectraRunConfig

    root = tmp_path_factory.mktemp("distributed_configs")
    tiny_bert_teacher(root / "bert", tiny_tokenizer, dropout=0.1)
    tiny_electra(root / "electra", tiny_tokenizer, dropout=0.1)
    configs = {
        "bert_kd": (["bert_kd", "distill"], load_config(DistilConfig, overrides=[
            f"teacher={root / 'bert'}", f"data.corpus={tiny_corpus}", "student.num_layers=2", *TRAIN])),
        "electra_kd": (["electra_kd", "distill"], load_config(ElectraRunConfig, overrides=[
            f"teacher={root / 'electra' / 'discriminator'}", f"data.corpus={tiny_corpus}", "student.num_layers=2",
            "loss.train_generator=true", *TRAIN])),
    }
    return {name: (command, write_config(cfg, root / f"{name}.yaml")) for name, (command, cfg) in configs.items()}


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory) -> dict[str, Path]:
    """The uninterrupted 1-process run of each CLI (4 micro-batches per step), made once."""
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for name, (command, config) in cli.items():
        _ok(_run(one_process(), command, config, root / name))
        runs[name] = root / name
    return runs


def _final_eval(run: Path) -> dict[str, float]:
    return {k: v for k, v in read_metrics(run / "metrics.jsonl")[-1].items() if k.startswith("eval/")}


def _last_losses(run: Path) -> dict[str, float]:
    """The held-out losses at the end and the training losses logged at the last step."""
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if "loss/total" in r][-1]
    return {**_final_eval(run), **{k: v for k, v in train.items() if k.startswith(("loss/", "step"))}}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert_kd", "electra_kd"])
def test_zero2_two_processes_match_one_process_and_resume_bitwise_after_sigkill(cli, reference, name, tmp_path):
    command, config = cli[name]
    full, killed = tmp_path / "full", tmp_path / "killed"
    _ok(_run(accelerate_zero2(), command, config, full))
    # ZeRO-2 ran (one optimizer shard per process), with 12 AdamW steps for 12 steps of 2 micro-batches, and
    # DeepSpeed clipped at train.max_grad_norm (1.0 by default)
    files = json.loads((full / "checkpoint-12" / "trainer_state.json").read_text())["files"]
    assert "optimizer.pt" not in files and {"optimizer-rank0.pt", "optimizer-rank1.pt"} <= files.keys()
    shard = torch_load(full / "checkpoint-12" / "optimizer-rank1.pt")
    assert {int(s["step"]) for s in shard["base_optimizer_state"]["state"].values()} == {12}
    assert shard["clip_grad"] == 1.0
    worst = _largest_difference(reference[name], full, name)
    assert worst < 1e-5, f"ZeRO-2 on 2 processes vs 1 process: largest parameter difference {worst}"
    one, two = _final_eval(reference[name]), _final_eval(full)
    assert one.keys() == two.keys() and all(abs(one[k] - two[k]) < 1e-5 * max(1, abs(one[k])) for k in one), (one, two)

    # rank 1 dies in the middle of writing its shard of checkpoint-8; the resumed run ends where the full one did
    first = _run(accelerate_zero2(), command, config, killed, KILL_DURING_SAVE="checkpoint-8/optimizer-rank1.pt")
    assert first.returncode != 0 and not (killed / "checkpoint-8").exists()
    last = _run(accelerate_zero2(), command, config, killed, "--resume")
    _ok(last)
    assert "checkpoint-4 at step 4" in last.stdout
    assert _largest_difference(full, killed, name) == 0.0, "resumed ZeRO-2 run must equal the uninterrupted one"


@pytest.mark.slow
@pytest.mark.parametrize("name,launcher", [("bert_kd", accelerate_ddp), ("electra_kd", torchrun)])
def test_ddp_stops_on_sigterm_then_resumes_after_sigkill_bitwise(cli, reference, name, launcher, tmp_path):
    command, config = cli[name]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    _ok(_run(launcher(), command, config, full))
    worst = _largest_difference(reference[name], full, name)
    assert worst < 1e-5, f"DDP on 2 processes vs 1 process: largest parameter difference {worst}"

    # the launcher gets SIGTERM (what SLURM sends) during step 3 and forwards it: both processes finish a step,
    # write a checkpoint at the same step and stop with one line
    first = _run(launcher(), command, config, stopped, SIGNAL_AT_STEP="2:SIGTERM:launcher")
    said = [line for line in first.stderr.splitlines() if line.startswith("stopped:")]
    assert len(said) == 1 and "--resume" in said[0], first.stderr[-4000:]
    step = int(re.search(r"SIGTERM at step (\d+) of 12", said[0]).group(1))
    assert 3 <= step < 8 and json.loads((stopped / f"checkpoint-{step}" / "trainer_state.json").read_text())["step"] == step
    second = _run(launcher(), command, config, stopped, "--resume", KILL_DURING_SAVE="checkpoint-8/optimizer.pt")
    assert f"checkpoint-{step} at step {step}" in second.stdout and second.returncode != 0
    last = _run(launcher(), command, config, stopped, "--resume")
    _ok(last)
    newest = max(step, 4)  # the resumed run saved checkpoint-4 (train.save_every) when it stopped before it
    assert f"checkpoint-{newest} at step {newest}" in last.stdout
    assert _largest_difference(full, stopped, name) == 0.0, "stopped, killed and resumed DDP run must equal the full one"
    assert _last_losses(stopped) == _last_losses(full)


@pytest.mark.slow
@pytest.mark.parametrize("name,signal_name", [("bert_kd", "SIGTERM"), ("electra_kd", "SIGINT")])
def test_one_process_stops_on_sigterm_or_ctrl_c_and_resumes_bitwise(cli, reference, name, signal_name, tmp_path):
    command, config = cli[name]
    out = tmp_path / "run"
    first = _run(one_process(), command, config, out, SIGNAL_AT_STEP=f"5:{signal_name}:self")
    assert first.returncode == 75, first.stderr[-4000:]
    assert "Traceback" not in first.stderr
    said = [line for line in first.stderr.splitlines() if line.startswith("stopped:")]
    assert said == [f"stopped: {signal_name} at step 6 of 12: the step finished and {out / 'checkpoint-6'} was saved; "
                    "to continue, run the same command with --resume"], first.stderr[-2000:]
    last = _run(one_process(), command, config, out, "--resume")
    _ok(last)
    assert "checkpoint-6 at step 6" in last.stdout
    assert _largest_difference(reference[name], out, name) == 0.0, "stopped and resumed run must equal the full one"


@pytest.mark.slow
def test_zero2_bf16_saves_final_from_the_fp32_master_weights(tiny_corpus, tmp_path):
    config = write_config(tiny_pretrain_config(tiny_corpus, mixed_precision="bf16"), tmp_path / "config.yaml")
    out = tmp_path / "run"
    done = _run(accelerate_zero2("--mixed_precision", "bf16"), ["kd_core.pretrain"], config, out)
    _ok(done)
    assert "precision bf16" in done.stdout
    weights = load_file(out / "final" / "model.safetensors")
    trained = weights["bert.encoder.layer.0.attention.self.query.weight"]
    # DeepSpeed trains bf16 copies of the weights; values between bf16's steps come only from the fp32 masters
    assert trained.dtype == torch.float32 and not torch.equal(trained, trained.bfloat16().float())


def _mpi_style(command: list[str], out: Path, *extra: str, **env: str) -> list[subprocess.CompletedProcess]:
    """2 processes started as mpirun / srun would: their rank only in OMPI_COMM_WORLD_*, no RANK."""
    port = _port()
    procs = [subprocess.Popen([sys.executable, str(FAULT_RUN), *command, "--output-dir", str(out), *extra],
                              env=_env(OMPI_COMM_WORLD_RANK=str(r), OMPI_COMM_WORLD_SIZE="2",
                                       OMPI_COMM_WORLD_LOCAL_RANK=str(r), OMPI_COMM_WORLD_LOCAL_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_processes_that_see_different_checkpoints_stop_with_one_error(tiny_corpus, tmp_path):
    config = write_config(tiny_pretrain_config(tiny_corpus, save_every=4, max_steps=8), tmp_path / "config.yaml")
    out = tmp_path / "run"
    _ok(_run(one_process(), ["kd_core.pretrain"], config, out))
    before = (out / "metrics.jsonl").read_text()
    # rank 1 misses the newest checkpoint (a stale listing): resuming either one would split the run in two
    runs = _mpi_style(["kd_core.pretrain", "--config", str(config)], out, "--resume", HIDE_NEWEST_CHECKPOINT_ON_RANK="1")
    assert [r.returncode for r in runs] == [2, 2], runs[0].stderr[-3000:]
    errors = _error_lines(*(r.stderr for r in runs))
    assert len(errors) == 1 and "see different checkpoints" in errors[0] and "rank 1" in errors[0], errors
    assert not any("Traceback" in r.stderr for r in runs)
    assert (out / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_output_dir_not_shared_by_every_process_is_one_error(cli, tmp_path):
    command, config = cli["bert_kd"]
    out, local = tmp_path / "shared", tmp_path / "node-local"
    done = _run(torchrun(), command, config, out, OUTPUT_DIR_ON_RANK=f"1:{local}")
    assert done.returncode != 0
    errors = _error_lines(done.stdout, done.stderr)
    assert len(errors) == 1 and "shared by all nodes" in errors[0], done.stderr[-3000:]
    assert not (out / "config.yaml").exists() and not local.exists()


@pytest.mark.slow
def test_batch_split_error_is_printed_once_before_the_output_dir_is_touched(cli, tmp_path):
    command, config = cli["bert_kd"]
    out = tmp_path / "run"
    done = _run(torchrun(), command, config, out, "--set", "train.batch_size=6")
    assert done.returncode != 0
    assert _error_lines(done.stdout, done.stderr) == [
        "error: train.batch_size=6 must be a multiple of micro_batch_size (2) x processes (2)"], done.stderr[-3000:]
    assert run_entries(out) == []  # the corrected command needs no --overwrite


@pytest.mark.slow
def test_accelerate_launch_cpu_with_two_processes_is_refused(cli, tmp_path):
    command, config = cli["bert_kd"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    done = _run(launcher, command, config, tmp_path / "run")
    assert done.returncode != 0
    assert [e for e in _error_lines(done.stderr) if "--multi_gpu --num_processes N" in e], done.stderr[-3000:]


def test_launcher_precision_that_differs_from_the_config_is_refused(tiny_corpus, tiny_tokenizer, tmp_path, monkeypatch):
    from transformers import BertConfig, BertForMaskedLM

    cfg = tiny_pretrain_config(tiny_corpus)
    student = BertForMaskedLM(BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    with pytest.raises(ConfigError, match="use --set train.mixed_precision=bf16"):
        engine_on_corpus(cfg, MaskedLMObjective(student, {"mlm": 1.0}), tiny_tokenizer, tiny_corpus, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_output_dir_without_flock_is_one_error_line(tiny_corpus, tmp_path, monkeypatch, capsys):
    import errno

    import kd_core.run
    from kd_core.pretrain import main

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(kd_core.run.fcntl, "flock", no_locks)
    config = write_config(tiny_pretrain_config(tiny_corpus), tmp_path / "config.yaml")
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot lock") and "does not support flock" in err[0], err
