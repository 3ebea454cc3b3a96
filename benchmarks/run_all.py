"""`make bench`: every benchmark script under benchmarks/, one after another (GPU ones only with a GPU)."""
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GPU_ONLY = {"throughput.py"}
for script in sorted(HERE.glob("*.py")):
    if script.name == "run_all.py":
        continue
    if script.name in GPU_ONLY and not torch.cuda.is_available():
        print(f"== {script.name}: skipped (needs a CUDA GPU)", flush=True)
        continue
    print(f"== {script.name}", flush=True)
    subprocess.run([sys.executable, str(script)], check=True, cwd=HERE.parent)
