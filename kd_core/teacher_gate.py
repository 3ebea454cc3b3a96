"""A teacher's quality gate and its card.

A teacher is usable only past a measured gate, on held-out text, next to the baseline that says what its numbers
are worth (kd_core.mlm_eval):
- MLM teacher: held-out masked-LM loss <= 4.5 nats AND top-1 >= 25% (the unigram model of the same corpus scores
  about 6.8 nats / 6% on it: a teacher near those numbers distils a unigram distribution);
- ELECTRA teacher: held-out RTD loss <= 0.6 x the constant predictor's at the same replacement rate (the labels'
  entropy), and RTD ROC AUC >= 0.8; its generator is reported beside it.
The card (card.json beside the teacher; results/teachers.md + .json for the committed ones) holds the measures, the
gate and its verdict, and how the teacher was made (recipe, steps, tokens, wall time, commit, command, hardware).
A teacher that fails its gate is a `TeacherGateError`: one `error:` line (exit 2) naming the numbers and the fix.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError
from .files import atomic_write_text

CARD = "card.json"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class MLMGate:
    max_loss: float = 4.5  # nats, held-out masked-LM cross-entropy
    min_top1: float = 0.25  # held-out masked-token top-1 accuracy


@dataclass(frozen=True)
class ElectraGate:
    max_loss_ratio: float = 0.6  # held-out RTD loss / the constant predictor's at the same replacement rate
    min_auc: float = 0.8


class TeacherGateError(UserError):
    """A teacher below its quality gate."""


def mlm_failures(measures: dict, gate: MLMGate = MLMGate()) -> list[str]:
    """What fails the MLM gate, each with its number and the threshold ([] = passes)."""
    out = []
    if not measures["mlm_loss"] <= gate.max_loss:
        out.append(f"held-out MLM loss {measures['mlm_loss']:.2f} nats > {gate.max_loss}")
    if not measures["masked_accuracy"] >= gate.min_top1:
        out.append(f"top-1 {100 * measures['masked_accuracy']:.1f}% < {100 * gate.min_top1:.0f}%")
    return out


def electra_failures(measures: dict, gate: ElectraGate = ElectraGate()) -> list[str]:
    out = []
    limit = gate.max_loss_ratio * measures["constant_rtd_loss"]
    if not measures["rtd_loss"] <= limit:
        out.append(f"held-out RTD loss {measures['rtd_loss']:.3f} > {gate.max_loss_ratio} x the constant predictor's "
                   f"{measures['constant_rtd_loss']:.3f} = {limit:.3f}")
    if not measures["rtd_auc"] >= gate.min_auc:
        out.append(f"RTD AUC {measures['rtd_auc']:.3f} < {gate.min_auc}")
    return out


def gate_of(kind: str):
    return MLMGate() if kind == "mlm" else ElectraGate()


def failures(kind: str, measures: dict) -> list[str]:
    return mlm_failures(measures) if kind == "mlm" else electra_failures(measures)


def baseline_text(kind: str, m: dict) -> str:
    if kind == "mlm":
        return f"unigram {m['unigram_loss']:.2f} nats / {100 * m['unigram_accuracy']:.1f}%"
    return f"replacement rate {100 * m['replaced_rate']:.1f}%, AUC {m['rtd_auc']:.3f}"


def enforce(card: dict, where: str | Path, fix: str) -> None:
    """Raise a one-line TeacherGateError when the card's teacher fails its gate."""
    kind, m = card["kind"], card["held_out"]["valid"]
    failed = failures(kind, m)
    if failed:
        raise TeacherGateError(f"the {kind} teacher {where} fails its quality gate: {'; '.join(failed)} "
                               f"({baseline_text(kind, m)}); it is not used. Fix: {fix}")


def commit() -> str:
    """HEAD's short hash, with '+dirty' when tracked files differ from it; 'unknown' outside a checkout."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if head.returncode:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def hardware() -> str:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, {torch.get_num_threads()} torch thread(s), {device}, "
            f"torch {torch.__version__}")


def write_card(path: Path, card: dict) -> Path:
    atomic_write_text(path / CARD, json.dumps(card, indent=1))
    return path / CARD


def read_card(path: Path) -> dict | None:
    f = Path(path) / CARD
    return json.loads(f.read_text()) if f.is_file() else None


def stamp() -> dict:
    return {"commit": commit(), "hardware": hardware(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def gate_dict(kind: str) -> dict:
    return asdict(gate_of(kind))
