"""`python tests/fault_run.py MODULE ARGS...` runs `python -m MODULE ARGS...` with a fault the test injects,
so the package itself carries no test hooks.

KILL_DURING_SAVE=checkpoint-8/optimizer.pt: when torch.save writes that file of that checkpoint, half of
its bytes reach the disk and the process is SIGKILLed (a machine dying in the middle of a write).
"""
import io
import os
import runpy
import signal
import sys

import torch

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

module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
