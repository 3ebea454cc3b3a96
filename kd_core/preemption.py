"""Stopping cleanly on SIGTERM (what SLURM and cloud schedulers send before they kill a job) and Ctrl-C.

While a run trains, either signal only sets a flag; the engine reads it after each step, all processes
together (a signal that reached one process stops them all at the same step), saves a checkpoint and
raises `Preempted`, which the CLI turns into one line and exit status 75. Further SIGTERMs are ignored
(a launcher forwards the one it got); a second Ctrl-C stops at once.
"""
from __future__ import annotations

import signal
import threading

import torch
from accelerate import Accelerator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """A context in which SIGTERM and SIGINT ask the run to stop after its current step."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def agreed(self, acc: Accelerator) -> bool:
        """Whether any process received a signal (every process gets the same answer)."""
        flag = torch.tensor(float(self.received is not None), device=acc.device)
        return bool(acc.reduce(flag, "max")) if acc.num_processes > 1 else bool(flag)
