"""Durable files and directories: fsync before a rename publishes them, so a crash leaves the old
version or the new one, never a torn one. Checkpoints, datasets, results and recipes all write
through these."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, so a rename that follows publishes data on disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_dir(final: Path) -> Path:
    """A fresh temporary directory beside `final`; call `commit_dir` when it is complete."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: Path, final: Path) -> None:
    """Make `tmp` durable and replace `final` by it. The old `final` is moved aside first, so a crash
    leaves one complete copy (`final` or `final.old`)."""
    fsync_tree(tmp)
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def remove_dir(path: Path) -> None:
    """Rename first, so a directory half-deleted by a crash never looks like a complete checkpoint."""
    doomed = path.with_name(path.name + ".deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def seed_run_dirs(run_dir: Path, seeds: int) -> list[Path]:
    """The run directories of `seeds` distillation seeds of one row: run_dir, then <run_dir>_seed1, ..."""
    return [run_dir] + [run_dir.with_name(f"{run_dir.name}_seed{k}") for k in range(1, seeds)]
