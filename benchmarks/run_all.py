"""`make bench`: every benchmark script under benchmarks/, one after another (GPU ones only with a GPU).
bf16_parity.py is a loss-parity check, not a speed benchmark: run it on its own."""
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GPU_ONLY = {"throughput.py"}
NOT_BENCHMARKS = {"run_all.py", "common.py", "bf16_parity.py"}
for script in sorted(HERE.glob("*.py")):
    if script.name in NOT_BENCHMARKS:
        continue
    if script.name in GPU_ONLY and not torch.cuda.is_available():
        print(f"== {script.name}: skipped (needs a CUDA GPU)", flush=True)
        continue
    print(f"== {script.name}", flush=True)
    subprocess.run([sys.executable, str(script)], check=True, cwd=HERE.parent)
