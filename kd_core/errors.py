"""The one exception type for mistakes a user can fix.

A CLI prints a `UserError` as one `error: ...` line and exits 2; every other exception is a bug
(or a fault we did not foresee) and keeps its traceback, so catching broad builtins like
ValueError never hides one.
"""
from __future__ import annotations


class UserError(Exception):
    """A bad config, a missing or malformed input, a used output dir: the message names the problem and the fix."""


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
