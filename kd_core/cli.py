"""What every command does around its work: a user error as one line (exit 2), a stop on a signal as one
line (exit 75), a summary at the end."""
from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable

from accelerate import PartialState

from .distributed import process_rank
from .errors import PREEMPTED_EXIT, Preempted, UserError, one_line


# a path the user cannot write (or read), or a full or read-only disk: theirs to fix, in every command
USER_FIXABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def quiet_transformers() -> None:
    """No load report and no progress bar at every model load and save: our loaders check what a checkpoint
    lacks themselves (`kd_core.student.load_complete`) and say it in one line."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def exit_code_of(work: Callable[[], object]) -> int:
    """0 when `work` returns; 2 with one `error: ...` line for a UserError (printed by the main process alone
    when every process raised it) or an unwritable/full path; 75 with one line for a signal that stopped the run;
    anything else propagates."""
    quiet_transformers()
    try:
        work()
    except UserError as e:
        if not e.everywhere or process_rank() == 0:
            print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except Preempted as e:
        if process_rank() == 0:
            print(f"stopped: {one_line(e)}", file=sys.stderr)
        return PREEMPTED_EXIT
    except OSError as e:
        if e.errno not in USER_FIXABLE_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or one_line(e)}; choose a path you can write (check its permissions "
              "and free space) and run the command again", file=sys.stderr)
        return 2
    return 0


def script_exit(main: Callable[[], int]) -> int:
    """A script's exit status: its main's, or 2 with one `error: ...` line for a UserError."""
    codes: list[int] = []
    return exit_code_of(lambda: codes.append(main())) or codes[0]


def run_and_report(run: Callable[[], dict], output_dir: str) -> int:
    """A training command: exit_code_of, then the final logged values and the TensorBoard command."""
    summary: dict = {}
    code = exit_code_of(lambda: summary.update(run() or {}))
    if code == 0 and summary and PartialState().is_main_process:
        print({k: round(v, 4) for k, v in summary.items() if isinstance(v, float)})
        print(f"TensorBoard: tensorboard --logdir {output_dir}/tb")
    return code


def add_run_arguments(parser: argparse.ArgumentParser, sections: str) -> None:
    """The flags of every training command: config, overrides, output dir, resume, overwrite."""
    parser.add_argument("--config", help=f"YAML config (sections: {sections})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --output-dir")
