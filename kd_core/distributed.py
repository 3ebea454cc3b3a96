"""The processes of one run: how they are started, which one is the main one, and how they agree.

`process_state()` creates accelerate's process state the one way the engine needs it (CPU processes over
gloo, DeepSpeed when launched with it), so the run skeleton knows its rank (from the process group, not
one environment variable) before the engine exists. What may differ between processes (what each sees
in the output dir, which checkpoint reads back) is compared with `agree`: a difference is one error on
every process, never a hang or two processes resuming different states.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Callable

import torch
from accelerate import PartialState
from accelerate.utils import is_deepspeed_available

from .errors import SharedError, UserError

# the variables launchers set to the number of processes they started (torchrun, Open MPI, MPICH/PMI, MVAPICH)
STARTED_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def deepspeed_requested() -> bool:
    """`accelerate launch --use_deepspeed` or a DEEPSPEED accelerate config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerator_cpu_flag() -> bool:
    """accelerate's `cpu=`: True makes it run CPU processes over gloo, but also drops DeepSpeed; under
    DeepSpeed on a CPU the gloo process group comes from `process_state`, created first with cpu=True."""
    return not torch.cuda.is_available() and not deepspeed_requested()


def process_state() -> PartialState:
    """accelerate's process state (the process group), created once per process."""
    if deepspeed_requested() and not is_deepspeed_available():
        raise UserError("DeepSpeed was requested (accelerate launch --use_deepspeed or a DEEPSPEED config) but is not "
                        "installed: pip install -e '.[deepspeed]'")
    state = PartialState(cpu=not torch.cuda.is_available())
    started = max(int(os.environ.get(name, "1") or 1) for name in STARTED_VARS)
    if started > state.num_processes:
        raise UserError(f"{started} processes were started but they did not join one run (each would train alone); "
                        "start them with torchrun or accelerate launch (under SLURM: one `srun torchrun` per node)")
    launcher_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() == "true"
    if launcher_cpu and "MASTER_ADDR" in os.environ and state.num_processes == 1:
        # accelerate's simple launcher sets MASTER_ADDR only when asked for several processes
        raise UserError("accelerate launch --cpu starts one process whatever --num_processes says; for N CPU "
                        "processes use `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`")
    return state


def process_rank() -> int:
    """This process's rank: from the process group once it exists, else from the launcher's variables."""
    if PartialState._shared_state:
        return PartialState().process_index
    for name in RANK_VARS:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def gather(value: Any) -> list[Any]:
    """`value` from every process, in rank order (a picklable object)."""
    state = PartialState()
    if state.num_processes == 1:
        return [value]
    values: list[Any] = [None] * state.num_processes
    torch.distributed.all_gather_object(values, value)
    return values


def agree(value: Any, problem: str) -> None:
    """Raise `problem` (naming each process's value) on every process unless all processes hold the same value."""
    values = gather((socket.gethostname(), value))
    if any(v != values[0][1] for _, v in values):
        seen = "; ".join(f"rank {rank} on {host}: {v}" for rank, (host, v) in enumerate(values))
        raise SharedError(f"{problem} ({seen})")


def on_main(work: Callable[[], None]) -> None:
    """Run `work` on the main process; a UserError it raises is raised on every process (printed once), so
    none waits for a main process that has stopped."""
    state = PartialState()
    error = None
    if state.is_main_process:
        try:
            work()
        except UserError as e:
            error = e
    box = [None if error is None else str(error)]
    if state.num_processes > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise SharedError(box[0])
