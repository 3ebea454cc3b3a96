"""Every logged step goes to `metrics.jsonl` and to TensorBoard (`tb/`), with the same keys."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .checkpoint import atomic_write_text
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
