"""What every training command does around its run: user errors as one line, a summary at the end."""
from __future__ import annotations

import sys
from typing import Callable

from accelerate import PartialState

from .config import ConfigError
from .engine import NonFiniteLossError

# errors that name the problem and the fix (missing file, bad config, vocab/length mismatch, ...)
USER_ERRORS = (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError, NonFiniteLossError)


def run_and_report(run: Callable[[], dict], output_dir: str) -> int:
    """Exit status 2 with `error: ...` for a user error; otherwise print the final logged values."""
    try:
        summary = run()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary and PartialState().is_main_process:
        print({k: round(v, 4) for k, v in summary.items() if isinstance(v, float)})
        print(f"TensorBoard: tensorboard --logdir {output_dir}/tb")
    return 0
