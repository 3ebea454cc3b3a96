"""How a result was produced: the commit, the hardware, and paths that mean the same on another machine."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def portable(command: str) -> str:
    """The command without this machine's absolute paths: relative inside the repository, else <outside>/name."""
    def one(token: str) -> str:
        key, sep, value = token.rpartition("=") if "=/" in token else ("", "", token)
        if not value.startswith("/"):
            return token
        path = Path(value)
        inside = path.is_relative_to(ROOT)
        return key + sep + (str(path.relative_to(ROOT)) if inside else f"<outside>/{path.name}")
    return " ".join(one(token) for token in command.split(" "))


def portable_paths(result):
    """A results object for a committed file: model paths without this machine's prefix, and without the per-example dev
    predictions (they stay in each run's result.json, where kd_core.glue.compare reads them)."""
    def slim(value):
        if isinstance(value, dict):
            return {k: slim(v) for k, v in value.items() if k != "dev_examples"}
        if isinstance(value, list):
            return [slim(v) for v in value]
        return portable(value) if isinstance(value, str) and value.startswith("/") else value
    return slim(result)


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() or "unknown"


def provenance(command: str) -> dict:
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # torch is always there; the device query is best-effort
        device = "unknown"
    return {"command": portable(command), "commit": commit(),
            "hardware": f"{platform.machine()} {os.cpu_count()} cores, {device}", "date": time.strftime("%Y-%m-%d")}
