"""`python tests/fault_run.py MODULE ARGS...` runs `python -m MODULE ARGS...` with a fault the test injects,
so the package itself carries no test hooks. Also the program torchrun / accelerate launch start in tests.

KILL_DURING_SAVE=checkpoint-8/optimizer.pt: when torch.save writes that file of that checkpoint, half of
its bytes reach the disk and the process is SIGKILLed (a machine dying in the middle of a write).
SIGNAL_AT_STEP=6:SIGTERM:launcher: when step 7 begins, rank 0 sends SIGTERM to its launcher (torchrun,
accelerate launch: what a scheduler signals), or with `self` to itself (a lone process, Ctrl-C).
HIDE_NEWEST_CHECKPOINT_ON_RANK=1: that rank does not see the newest checkpoint (a stale directory listing).
OUTPUT_DIR_ON_RANK=1:/path: that rank gets another --output-dir (a node-local dir on a multi-node run).
Under DeepSpeed, its CPU shared-memory all-reduce kernel (used for inference only) is not JIT-compiled: that
takes a minute of g++ on a fresh machine and changes nothing in training.
"""
import io
import os
import runpy
import signal
import sys

import torch

from kd_core.distributed import process_rank

target = os.environ.get("KILL_DURING_SAVE")
if target:
    checkpoint, filename = target.split("/")
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        path = str(f)
        if os.path.basename(path) == filename and os.path.basename(os.path.dirname(path)) == checkpoint + ".tmp":
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open(path, "wb") as out:
                out.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
                out.flush()
                os.fsync(out.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save

if os.environ.get("SIGNAL_AT_STEP"):
    from kd_core.engine import Engine

    at, name, whom = os.environ["SIGNAL_AT_STEP"].split(":")
    real_step = Engine.step

    def signalled_step(self, micro_batches):
        if self.step_count == int(at) and process_rank() == 0:
            os.kill(os.getppid() if whom == "launcher" else os.getpid(), getattr(signal, name))
        return real_step(self, micro_batches)

    Engine.step = signalled_step

if os.environ.get("HIDE_NEWEST_CHECKPOINT_ON_RANK"):
    import kd_core.engine

    real_complete = kd_core.engine.complete_checkpoints
    hidden_on = int(os.environ["HIDE_NEWEST_CHECKPOINT_ON_RANK"])
    kd_core.engine.complete_checkpoints = lambda d: real_complete(d)[:-1] if process_rank() == hidden_on else real_complete(d)

if os.environ.get("OUTPUT_DIR_ON_RANK"):
    rank, path = os.environ["OUTPUT_DIR_ON_RANK"].split(":", 1)
    if process_rank() == int(rank):
        sys.argv[sys.argv.index("--output-dir") + 1] = path

if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
    import deepspeed.comm.torch  # noqa: F401 (the module; `deepspeed.comm.torch` as an attribute is PyTorch)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None

module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
