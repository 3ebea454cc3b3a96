"""Durable files and checkpoint directories: writing them, finding them, reading them back.

A checkpoint is written as `checkpoint-<step>.tmp`, every file fsynced, and renamed to
`checkpoint-<step>` only when complete; its `trainer_state.json` (written last) lists every file
with its size. An object every process holds a part of (a DeepSpeed ZeRO optimizer shard) is one
`<name>-rank<r>.pt` per process, written by that process into the same `.tmp` directory first. A save killed half-way leaves nothing `--resume` would pick, a checkpoint being
deleted is renamed away first, and a checkpoint whose files do not read back is reported by name
so `--resume` can fall back to an older one.
"""
from __future__ import annotations

import importlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import commit_dir, remove_dir

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
STUDENT_DIR = "student"


# ---- finding checkpoints ------------------------------------------------------------------------
def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def progress_without_checkpoint(output_dir: str | Path, first_save_step: int) -> list[str]:
    """What in a dir without a complete checkpoint shows that a run got past its first checkpoint (so starting
    from scratch would throw that run away): `final/`, a checkpoint folder renamed or half-committed, or metrics
    logged after the step where the first checkpoint is written. Empty for a new dir or a run killed before that."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [f"{p.name}/" for p in sorted(root.iterdir())
             if p.name.startswith(("final", "checkpoint-")) and not p.name.endswith((".tmp", ".deleting"))]
    metrics = root / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()] \
        if metrics.is_file() else []
    if steps and max(steps) > first_save_step:
        found.append(f"metrics.jsonl logs step {max(steps)}, after the first checkpoint at step {first_save_step}")
    return found


def set_aside(path: Path, why: str) -> Path:
    """Rename a checkpoint so that --resume never picks it, keeping its files: `checkpoint-8.<why>`."""
    aside = path.with_name(f"{path.name}.{why}")
    os.replace(path, aside)
    return aside


def prune_checkpoints(output_dir: str | Path, keep: int, up_to_step: int) -> None:
    """Keep the newest `keep` complete checkpoints at or before `up_to_step` (this run's lineage; a
    later one, e.g. a broken checkpoint that --resume skipped, is never removed here) and clear
    leftovers of killed saves and deletions."""
    root = Path(output_dir)
    ours = [(s, p) for s, p in complete_checkpoints(root) if s <= up_to_step]
    for _, path in ours[:-keep] if keep > 0 else []:
        remove_dir(path)
    for stale in [*root.glob("checkpoint-*.tmp"), *root.glob("checkpoint-*.deleting")]:
        shutil.rmtree(stale, ignore_errors=True)
    for old in root.glob("checkpoint-*.old"):
        if old.with_suffix("").exists():  # the commit finished; otherwise .old is the only copy: keep it
            shutil.rmtree(old, ignore_errors=True)


# ---- writing and reading one checkpoint -----------------------------------------------------------
def file_sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def write_shard(tmp: Path, name: str, rank: int, obj: Any) -> None:
    """This process's part of object `name`, into the checkpoint being built in `tmp`; durable before returning."""
    path = tmp / f"{name}-rank{rank}.pt"
    torch.save(obj, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_checkpoint(tmp: Path, final: Path, student, tokenizer, objects: dict[str, Any], config_yaml: str,
                     state: dict[str, Any], student_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Student (HF format, with tokenizer; `student_state` replaces its own weights), one `<name>.pt` per object,
    config and state, into `tmp` (from `atomic_dir(final)`, holding any shards already), then renamed to `final`."""
    student.save_pretrained(tmp / STUDENT_DIR, state_dict=student_state)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / STUDENT_DIR)
    for name, obj in objects.items():
        torch.save(obj, tmp / f"{name}.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    # the state file is written last and lists every file: its presence marks the directory complete
    (tmp / STATE_FILE).write_text(json.dumps({**state, "files": file_sizes(tmp)}, indent=1))
    commit_dir(tmp, final)
    return final


class CorruptCheckpoint(Exception):
    """A checkpoint file that is missing, truncated or unreadable."""

    def __init__(self, path: Path, name: str, reason: str):
        super().__init__(f"{path / name}: {reason}")


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    config_yaml: str
    student: dict[str, torch.Tensor]
    objects: dict[str, Any]  # each `<name>.pt` that was saved


def _read(path: Path, name: str, reader):
    try:
        return reader(path / name)
    except Exception as e:  # any failure to read a file is a broken checkpoint, reported with the file's name
        raise CorruptCheckpoint(path, name, f"{type(e).__name__}: {e}") from e


def torch_load(path: Path) -> Any:
    """torch.load with its safe unpickler; DeepSpeed's optimizer shards also hold a few DeepSpeed classes (its loss
    scaler, ZeRO stage enum, fragment addresses), which are allowed, and nothing else."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    refused = [n for n in names if not n.startswith("deepspeed.")]
    if refused:
        raise ValueError(f"holds objects torch will not load safely: {refused}")
    allowed = [getattr(importlib.import_module(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu")


def read_checkpoint(path: Path, model_class, object_names: list[str], rank: int = 0) -> Checkpoint:
    """Everything in the checkpoint, read and checked before anything is applied to a live run (of an object in
    per-process parts, this process's part)."""
    state = _read(path, STATE_FILE, lambda p: json.loads(p.read_text()))
    if "files" not in state:
        raise CorruptCheckpoint(path, STATE_FILE, "no file list (written by an older version of kd_core)")
    for name, size in state["files"].items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            raise CorruptCheckpoint(path, name, f"{'missing' if actual is None else f'{actual} bytes'}, "
                                                f"{size} bytes were written")
    student = _read(path, STUDENT_DIR, lambda p: model_class.from_pretrained(p, dtype=torch.float32).state_dict())
    files = {name: f"{name}.pt" if f"{name}.pt" in state["files"] else f"{name}-rank{rank}.pt" for name in object_names}
    objects = {name: _read(path, file, torch_load) for name, file in files.items() if file in state["files"]}
    config_yaml = _read(path, "config.yaml", lambda p: p.read_text())
    return Checkpoint(path, state, config_yaml, student, objects)


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
