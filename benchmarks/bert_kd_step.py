"""One DistilBERT distillation step: ours (kd_core engine + bert_kd objective) vs the plain loop a
user would write with HF models, on the same shapes, measured side by side in one run.

Plain loop: teacher(**batch).logits under no_grad, student(**batch, labels=...) for the MLM loss
and hidden states, full-vocabulary KL(T) at every non-pad position, CosineEmbeddingLoss on last
hidden states, 5/2/1 weights, backward, clip, torch AdamW.
Ours: the same terms through DistillationObjective + Engine.step; once with L_ce at all non-pad
positions (DistilBERT's default, same work as the plain loop) and once restricted to masked positions.

python benchmarks/bert_kd_step.py [--batch 16] [--seq 128] [--steps 6] [--results results/bench_bert_kd_step.json]
Shapes default to the CPU setting: MiniLM-L6-H384 teacher (vocab 30522) -> 3-layer student.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from bert_kd.objective import DistillationObjective, DistilLossConfig
from kd_core.provenance import portable
from common import make_mlm_batch
from kd_core.config import load_config
from kd_core.engine import Engine, TrainConfig
from kd_core.student import StudentConfig, build_student

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"ce": 5.0, "mlm": 2.0, "cos": 1.0}


def make_teacher(layers: int, hidden: int, heads: int, vocab: int) -> nn.Module:
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=heads, intermediate_size=4 * hidden)).eval()


def plain_loop_step(teacher, student, optimizer, batch, T=2.0):
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t_out = teacher(**inputs, output_hidden_states=True)
    s_out = student(**inputs, labels=batch["labels"], output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    s_logits, t_logits = s_out.logits[mask], t_out.logits[mask]
    ce = nn.functional.kl_div(nn.functional.log_softmax(s_logits / T, -1), nn.functional.softmax(t_logits / T, -1),
                              reduction="batchmean") * T ** 2
    s_h, t_h = s_out.hidden_states[-1][mask], t_out.hidden_states[-1][mask]
    cos = nn.CosineEmbeddingLoss()(s_h, t_h, torch.ones(len(s_h), device=s_h.device))
    loss = 5 * ce + 2 * s_out.loss + cos
    loss.backward()
    nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def time_steps(fn, steps: int, sync) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--results", default=str(ROOT / "results" / "bench_bert_kd_step.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    teacher = make_teacher(args.teacher_layers, args.hidden, args.heads, args.vocab).to(device)
    batch = make_mlm_batch(args.batch, args.seq, args.vocab, device, seed=1)
    tokens = args.batch * args.seq
    student_cfg = StudentConfig(num_layers=args.student_layers, layers="every_other")

    rows = {}
    # the plain loop
    student, _, _ = build_student(teacher, student_cfg)
    student.to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    rows["plain HF loop (full-vocab logits everywhere)"] = time_steps(
        lambda: plain_loop_step(teacher, student, opt, batch), args.steps, sync)
    # ours
    for label, restrict in (("ours, L_ce at all tokens", False), ("ours, L_ce at masked tokens", True)):
        student, layer_map, _ = build_student(teacher, student_cfg)
        objective = DistillationObjective(student, teacher, layer_map, WEIGHTS,
                                          DistilLossConfig(temperature=2.0, restrict_ce_to_mask=restrict))
        train = load_config(TrainConfig, overrides=[f"batch_size={args.batch}", f"micro_batch_size={args.batch}"])
        engine = Engine(train, objective, [], lambda rows, g: {}, f"/tmp/bench_bert_kd/{restrict}",
                        train)
        cpu_batch = {k: v.cpu() for k, v in batch.items()}
        rows[label] = time_steps(lambda: engine.step([cpu_batch]), args.steps, sync)

    base = statistics.median(rows["plain HF loop (full-vocab logits everywhere)"])
    table = []
    for label, times in rows.items():
        med = statistics.median(times)
        table.append({"path": label, "median_step_s": round(med, 4), "tokens_per_s": round(tokens / med),
                      "speedup_vs_plain": round(base / med, 3)})
    result = {
        "command": portable("python benchmarks/bert_kd_step.py " + " ".join(os.sys.argv[1:])),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=ROOT).stdout.strip(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else
        f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "shapes": vars(args) | {"results": portable(args.results), "tokens_per_step": tokens},
        "steps_timed": args.steps, "rows": table}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1))
    for r in table:
        print(f"{r['path']:48s} {r['median_step_s']:8.3f} s/step {r['tokens_per_s']:8d} tok/s  x{r['speedup_vs_plain']}")
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
