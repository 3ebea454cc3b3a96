"""Atomic files and checkpoint directories, RNG state capture, and finding what `--resume` loads.

A checkpoint directory is written as `checkpoint-<step>.tmp` and renamed to `checkpoint-<step>`
only when complete, so a save killed half-way leaves nothing that `--resume` would pick.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_dir(final: Path) -> Path:
    """A fresh temporary directory beside `final`; call `commit_dir` when it is complete."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp`. The old `final` is moved aside first, so a crash leaves one of them."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    out = []
    root = Path(output_dir)
    if not root.is_dir():
        return out
    for child in root.iterdir():
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            out.append((int(m.group(1)), child))
    return sorted(out)


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and stale temporaries."""
    found = complete_checkpoints(output_dir)
    for _, path in found[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for stale in Path(output_dir).glob("checkpoint-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())
