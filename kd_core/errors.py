"""The exception types a command turns into one line and an exit status.

A CLI prints a `UserError` as one `error: ...` line and exits 2; every other exception is a bug
(or a fault we did not foresee) and keeps its traceback, so catching broad builtins like
ValueError never hides one. `Preempted` is not an error: the run stopped on a signal after saving.
"""
from __future__ import annotations

PREEMPTED_EXIT = 75  # sysexits' EX_TEMPFAIL: stopped early, a rerun with --resume continues


class UserError(Exception):
    """A bad config, a missing or malformed input, a used output dir: the message names the problem and the fix."""

    everywhere = False  # True: every process of a run raises it alike, so only the main process prints it


class SharedError(UserError):
    """A problem the processes of a run found together (they disagree, or the main process failed)."""

    everywhere = True


class Preempted(Exception):
    """SIGTERM or SIGINT: the run finished its step, saved a checkpoint and stopped (the message says how to resume)."""


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
