"""Every logged step goes to `metrics.jsonl` and to TensorBoard (`tb/`), with the same keys."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .files import atomic_write_text
from .config import flatten

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Writes on the main process only; on resume, drops records logged after the checkpoint."""

    def __init__(self, output_dir: str | Path, resume_step: int | None = None):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / METRICS_FILE
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()
        # purge_step hides TensorBoard events a killed run wrote after the checkpoint we resume from
        self.tb = SummaryWriter(str(self.output_dir / "tb"), purge_step=resume_step)
        self._file = open(self.path, "a")

    def log_config(self, config: dict, config_yaml: str, metric_names: list[str]) -> None:
        self.tb.add_text("config", "```\n" + config_yaml + "\n```", 0)
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(config).items()}
        for summary in hparams(flat, {name: 0.0 for name in metric_names}):
            self.tb.file_writer.add_summary(summary)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.tb.add_text(tag, text, step)

    def log(self, step: int, record: dict[str, Any]) -> None:
        record = {"step": step, **record}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        self.tb.flush()
        self.tb.close()


def truncate_metrics(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def recorded_wall_s(run_dir: str | Path) -> float | None:
    """A training run's wall time summed over its resumed parts (its last logged `wall_s`); None if not logged."""
    path = Path(run_dir) / "metrics.jsonl"
    walls = [r["wall_s"] for r in read_metrics(path) if "wall_s" in r] if path.is_file() else []
    return walls[-1] if walls else None


def term_shares(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """Each weighted term's share of the total loss at the first and the last logged step of a run:
    {"start": {"ce": 0.08, ...}, "end": {...}}; empty when the run logged none."""
    records = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if any(k.startswith("share/") for k in r)]
    if not records:
        return {}
    return {when: {k.removeprefix("share/"): v for k, v in r.items() if k.startswith("share/")}
            for when, r in (("start", records[0]), ("end", records[-1]))}


def shares_text(shares: dict[str, dict[str, float]]) -> str:
    """'ce 8% -> 31%, mlm 88% -> 60%, cos 4% -> 9%': each term's share of the total loss, start -> end."""
    return ", ".join(f"{k} {100 * v:.0f}% -> {100 * shares['end'].get(k, 0.0):.0f}%" for k, v in shares["start"].items())


class StepAggregate:
    """Sums of step outputs between two log lines (device tensors; read once per log line)."""

    def __init__(self):
        self.raw: dict[str, torch.Tensor] = {}
        self.weighted: dict[str, torch.Tensor] = {}
        self.total = 0
        self.grad_norm = 0
        self.steps = 0
        self.tokens = 0

    def add(self, out: dict) -> None:
        self.tokens = self.tokens + out["tokens"]
        if "nonfinite_terms" in out:  # a skipped step contributes no loss value
            return
        for k, v in out["raw"].items():
            self.raw[k] = self.raw.get(k, 0) + v
            self.weighted[k] = self.weighted.get(k, 0) + out["weighted"][k]
        self.total = self.total + out["total"]
        self.grad_norm = self.grad_norm + out["grad_norm"].float()
        self.steps += 1

    def summary(self, acc: Accelerator, seconds: float) -> dict[str, float]:
        """Means over the interval's applied steps, averaged over processes; tokens summed."""
        tokens = acc.reduce(torch.as_tensor(self.tokens, device=acc.device), "sum")
        record: dict[str, float] = {"tokens": int(tokens), "tokens_per_s": float(tokens) / max(seconds, 1e-9)}
        if self.steps:
            n = self.steps
            means = {f"loss/{k}": v / n for k, v in self.raw.items()}
            means.update({f"weighted/{k}": v / n for k, v in self.weighted.items()})
            means["loss/total"] = self.total / n
            means["grad_norm"] = self.grad_norm / n
            keys = list(means)
            stacked = acc.reduce(torch.stack([torch.as_tensor(means[k], device=acc.device).float() for k in keys]),
                                 "mean")
            record.update({k: float(v) for k, v in zip(keys, stacked.tolist())})
            if record["loss/total"] > 0:  # each weighted term's share of the total: shows a term that is effectively off
                record.update({f"share/{k}": record[f"weighted/{k}"] / record["loss/total"] for k in self.weighted})
        return record
