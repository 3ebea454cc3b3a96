"""One DistilBERT distillation step on a CPU: ours (kd_core engine + bert_kd objective) vs the plain loop a
user would write with HF models, each lever of issue 23 alone and together, all rows interleaved in one run.

Plain loop: teacher(**batch).logits under no_grad, student(**batch, labels=...) for the MLM loss and hidden
states, full-vocabulary KL(T) at every non-pad position, CosineEmbeddingLoss on last hidden states, 5/2/1
weights, backward, clip, torch AdamW, fp32.
Ours: the same terms through DistillationObjective + Engine.step, L_ce at all non-pad positions (the plain
loop's work) or at masked ones; levers: bf16 autocast (`mixed_precision`), the fused chunked vocabulary KL
(`unfused` rows swap in the reference it is tested against), `teacher_half`, and the teacher skip (the
teacherless control, `mlm` alone, with the teacher forward forced back on as before).
Roofline share: the step's model FLOPs (counted as the plain loop computes them, formula in the JSON) per
second over the bf16 rate of a [tokens x width] @ [width x vocab] matmul timed in the same rounds.

python benchmarks/bert_kd_step.py [--batch 16] [--seq 128] [--rounds 5] [--results results/bench_bert_kd_step.json]
Shapes default to the CPU setting: MiniLM-L6-H384-shaped teacher (vocab 30522) -> 3-layer student.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from bert_kd.objective import DistillationObjective, DistilLossConfig
from common import ROOT, interleaved, loadavg, machine, make_mlm_batch, matmul_row
from kd_core import losses
from kd_core.config import load_config
from kd_core.engine import Engine, TrainConfig
from kd_core.provenance import portable
from kd_core.student import StudentConfig, build_student

WEIGHTS = {"ce": 5.0, "mlm": 2.0, "cos": 1.0}
PLAIN = "plain HF loop, fp32 (full-vocab logits everywhere)"
FLOPS_FORMULA = ("per step: teacher encoder fwd 2*N_t*T + 4*L_t*s*d*T, student encoder fwd+bwd 3x that with "
                 "N_s, L_s; vocabulary heads (d*d transform + d*V decoder) 2x per teacher position and 6x per "
                 "student position, at every token (all-token rows, as the plain loop) or at masked ones; "
                 "N = 12*d*d per layer, T tokens, s sequence length")


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


def unfused_vocab_kd_kl(s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, mask=None, temperature=1.0, chunk_rows=0):
    """The reference vocab_kd_kl is tested against: whole [positions x vocab] logits, then kd_kl."""
    with torch.no_grad():
        t_logits = nn.functional.linear(t_hidden, t_weight, t_bias)
    return losses.kd_kl(nn.functional.linear(s_hidden, s_weight, s_bias), t_logits, mask, temperature)


@contextlib.contextmanager
def unfused():
    fused, losses.vocab_kd_kl = losses.vocab_kd_kl, unfused_vocab_kd_kl
    try:
        yield
    finally:
        losses.vocab_kd_kl = fused


class TeacherAlwaysRun(DistillationObjective):
    """The objective as it was before the teacher skip: the teacher forward runs whatever the weights."""
    uses_teacher = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--results", default=str(ROOT / "results" / "bench_bert_kd_step.json"))
    args = parser.parse_args()
    info = machine()
    teacher = make_teacher(args.teacher_layers, args.hidden, args.heads, args.vocab)
    batch = make_mlm_batch(args.batch, args.seq, args.vocab, "cpu", seed=1)
    tokens = args.batch * args.seq
    n_masked = int((batch["labels"] != -100).sum())
    student_cfg = StudentConfig(num_layers=args.student_layers, layers="every_other")

    d, V, s = args.hidden, args.vocab, args.seq
    encoder = lambda layers, mult: mult * (2 * 12 * d * d * layers * tokens + 4 * layers * s * d * tokens)
    head = lambda positions, mult: mult * 2 * (d * d + d * V) * positions
    flops_all = encoder(args.teacher_layers, 1) + encoder(args.student_layers, 3) + head(tokens, 1) + head(tokens, 3)
    flops_masked = encoder(args.teacher_layers, 1) + encoder(args.student_layers, 3) + head(n_masked, 1) + head(n_masked, 3)
    flops_teacherless = encoder(args.student_layers, 3) + head(n_masked, 3)

    student, _, _ = build_student(teacher, student_cfg)
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    rows = {PLAIN: lambda: plain_loop_step(teacher, student, opt, batch)}
    flops = {PLAIN: flops_all}

    def ours(label, precision, restrict, fused=True, teacher_half=False, weights=WEIGHTS, cls=DistillationObjective,
             step_flops=flops_all):
        t = copy.deepcopy(teacher) if teacher_half else teacher  # teacher_half converts the teacher in place
        student, layer_map, _ = build_student(t, student_cfg)
        objective = cls(student, t, layer_map, weights, DistilLossConfig(temperature=2.0, restrict_ce_to_mask=restrict))
        train = load_config(TrainConfig, overrides=[f"batch_size={args.batch}", f"micro_batch_size={args.batch}",
                                                    f"mixed_precision={precision}", f"teacher_half={teacher_half}"])
        engine = Engine(train, objective, [], lambda rows, g: {}, f"/tmp/bench_bert_kd/{len(rows)}", train)

        def step():
            with contextlib.nullcontext() if fused else unfused():
                engine.step([batch])
        rows[label], flops[label] = step, step_flops

    ours("ours fp32, all tokens, unfused L_ce (before)", "no", False, fused=False)
    ours("ours fp32, all tokens, fused L_ce", "no", False)
    ours("ours bf16, all tokens, unfused L_ce", "bf16", False, fused=False)
    ours("ours bf16, all tokens, fused L_ce", "bf16", False)
    ours("ours bf16 + teacher_half, all tokens, fused L_ce", "bf16", False, teacher_half=True)
    ours("ours fp32, masked tokens (before)", "no", True, step_flops=flops_masked)
    ours("ours bf16, masked tokens", "bf16", True, step_flops=flops_masked)
    ours("ours bf16 + teacher_half, masked tokens", "bf16", True, teacher_half=True, step_flops=flops_masked)
    control = {"mlm": 1.0, "ce": 0.0, "cos": 0.0}
    ours("teacherless control (mlm only), fp32, teacher forward run (before)", "no", True, weights=control,
         cls=TeacherAlwaysRun, step_flops=flops_teacherless)
    ours("teacherless control (mlm only), fp32, teacher skipped", "no", True, weights=control,
         step_flops=flops_teacherless)
    matmuls = {name: f"matmul {tokens}x{d}x{V} {name}" for name in ("fp32", "bf16")}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        rows[matmuls[name]], flops[matmuls[name]] = matmul_row(dtype, tokens, d, V)

    timed = interleaved(rows, args.rounds)
    rate = {k: flops[k] / timed[k]["median_wall_s"] for k in rows}
    bf16_rate = rate[matmuls["bf16"]]
    fastest = max(rate[m] for m in matmuls.values())  # where bf16 is no faster, fp32's rate is the roof
    base = timed[PLAIN]
    table = []
    for label, t in timed.items():
        row = {"path": label, "median_step_s": round(t["median_wall_s"], 4), "median_cpu_s": round(t["median_cpu_s"], 4),
               "gflop_per_s": round(rate[label] / 1e9, 1), "share_of_bf16_matmul_rate": round(rate[label] / bf16_rate, 3),
               "share_of_fastest_matmul_rate": round(rate[label] / fastest, 3),
               "wall_s": t["wall_s"]}
        if not label.startswith("matmul"):
            row.update(tokens_per_s=round(tokens / t["median_wall_s"]),
                       speedup_vs_plain=round(base["median_wall_s"] / t["median_wall_s"], 3),
                       speedup_vs_plain_cpu_time=round(base["median_cpu_s"] / t["median_cpu_s"], 3))
        table.append(row)
    result = {"command": portable("python benchmarks/bert_kd_step.py " + " ".join(os.sys.argv[1:])), **info,
              "loadavg_end": loadavg(),
              "note": "rows interleaved round by round in one process, so ratios hold under a drifting load; "
                      "absolute rates move with the other jobs on the machine (loadavg at start and end)",
              "shapes": vars(args) | {"results": portable(args.results), "tokens_per_step": tokens,
                                      "masked_per_step": n_masked},
              "flops_formula": FLOPS_FORMULA, "model_flops_per_step": {k: v for k, v in flops.items()},
              "rounds": args.rounds, "rows": table}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1))
    for r in table:
        print(f"{r['path']:72s} {r['median_step_s']:8.3f} s {r.get('tokens_per_s', ''):>7} tok/s "
              f"x{r.get('speedup_vs_plain', '')} {100 * r['share_of_bf16_matmul_rate']:.0f}% of bf16 matmul, "
              f"{100 * r['share_of_fastest_matmul_rate']:.0f}% of the fastest")
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
