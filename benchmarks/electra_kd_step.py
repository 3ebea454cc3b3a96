"""One ELECTRA discriminator distillation step on a CPU (electra_kd objective through Engine.step, frozen
generator, the full loss: rtd + b1 * (emb + out + hid + att) + b2 * cos + b3 * kl), in fp32 (the old default),
bf16, and bf16 with `teacher_half`, rows interleaved in one run (`auto_precision_on_cpu` says which of fp32
and bf16 is the default on the machine). Roofline share: the step's model FLOPs per second over the bf16 rate of a
[tokens x width] @ [width x vocab] matmul timed in the same rounds.

python benchmarks/electra_kd_step.py [--batch 16] [--seq 128] [--rounds 5] [--results results/bench_electra_kd_step.json]
Shapes: MiniLM-L6-H384-shaped discriminator teacher (vocab 30522) -> 3-layer student; a new frozen generator
a quarter of the student's width (ELECTRA's 1/4), as deep as the student.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch
from transformers import ElectraConfig, ElectraForPreTraining

from common import ROOT, interleaved, loadavg, machine, make_mlm_batch, matmul_row
from electra_kd.distill import GeneratorConfig, new_generator
from electra_kd.objective import ElectraLossConfig, ElectraObjective, loss_weights
from kd_core.config import load_config
from kd_core.engine import Engine, TrainConfig
from kd_core.provenance import portable
from kd_core.student import StudentConfig, build_student

FLOPS_FORMULA = ("per step: teacher encoder fwd 2*N_t*T + 4*L_t*s*d*T, student encoder fwd+bwd 3x that with N_s, L_s, "
                 "generator encoder fwd (its width) and its vocabulary head 2*(d_g*e + e*V) at masked positions; "
                 "N = 12*width^2 per layer, T tokens, s sequence length, e embedding size")


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
    parser.add_argument("--results", default=str(ROOT / "results" / "bench_electra_kd_step.json"))
    args = parser.parse_args()
    info = machine()
    torch.manual_seed(0)
    teacher = ElectraForPreTraining(ElectraConfig(
        vocab_size=args.vocab, embedding_size=args.hidden, hidden_size=args.hidden, num_hidden_layers=args.teacher_layers,
        num_attention_heads=args.heads, intermediate_size=4 * args.hidden)).eval()
    batch = make_mlm_batch(args.batch, args.seq, args.vocab, "cpu", seed=1)
    tokens, n_masked = args.batch * args.seq, int((batch["labels"] != -100).sum())
    student_cfg = StudentConfig(num_layers=args.student_layers, layers="every_other")
    probe, _, _ = build_student(teacher, student_cfg, model_class=ElectraForPreTraining)
    generator = new_generator(probe, GeneratorConfig(tie_embeddings=False)).eval()  # frozen, its own weights

    d, V, s, g = args.hidden, args.vocab, args.seq, generator.config.hidden_size
    encoder = lambda layers, width, mult: mult * (2 * 12 * width * width * layers * tokens + 4 * layers * s * width * tokens)
    step_flops = (encoder(args.teacher_layers, d, 1) + encoder(args.student_layers, d, 3)
                  + encoder(generator.config.num_hidden_layers, g, 1) + 2 * (g * d + d * V) * n_masked)
    rows, flops = {}, {}
    cfg = ElectraLossConfig()

    def ours(label, precision, teacher_half=False):
        t = copy.deepcopy(teacher) if teacher_half else teacher  # teacher_half converts the teacher in place
        student, layer_map, _ = build_student(t, student_cfg, model_class=ElectraForPreTraining)
        objective = ElectraObjective(student, copy.deepcopy(generator), loss_weights(cfg, True), cfg, t, layer_map)
        train = load_config(TrainConfig, overrides=[f"batch_size={args.batch}", f"micro_batch_size={args.batch}",
                                                    f"mixed_precision={precision}", f"teacher_half={teacher_half}"])
        engine = Engine(train, objective, [], lambda rows, g: {}, f"/tmp/bench_electra_kd/{len(rows)}", train)
        rows[label], flops[label] = (lambda: engine.step([batch])), step_flops

    ours("ELECTRA distillation, fp32 (the old default)", "no")
    ours("ELECTRA distillation, bf16", "bf16")
    ours("ELECTRA distillation, bf16 + teacher_half", "bf16", teacher_half=True)
    matmuls = {name: f"matmul {tokens}x{d}x{V} {name}" for name in ("fp32", "bf16")}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        rows[matmuls[name]], flops[matmuls[name]] = matmul_row(dtype, tokens, d, V)

    timed = interleaved(rows, args.rounds)
    rate = {k: flops[k] / timed[k]["median_wall_s"] for k in rows}
    before = timed["ELECTRA distillation, fp32 (the old default)"]
    table = []
    for label, t in timed.items():
        row = {"path": label, "median_step_s": round(t["median_wall_s"], 4), "median_cpu_s": round(t["median_cpu_s"], 4),
               "gflop_per_s": round(rate[label] / 1e9, 1),
               "share_of_bf16_matmul_rate": round(rate[label] / rate[matmuls["bf16"]], 3),
               "share_of_fastest_matmul_rate": round(rate[label] / max(rate[m] for m in matmuls.values()), 3),
               "wall_s": t["wall_s"]}
        if not label.startswith("matmul"):
            row.update(tokens_per_s=round(tokens / t["median_wall_s"]),
                       speedup_vs_before=round(before["median_wall_s"] / t["median_wall_s"], 3),
                       speedup_vs_before_cpu_time=round(before["median_cpu_s"] / t["median_cpu_s"], 3))
        table.append(row)
    result = {"command": portable("python benchmarks/electra_kd_step.py " + " ".join(os.sys.argv[1:])), **info,
              "loadavg_end": loadavg(),
              "note": "rows interleaved round by round in one process, so ratios hold under a drifting load; "
                      "absolute rates move with the other jobs on the machine (loadavg at start and end)",
              "shapes": vars(args) | {"results": portable(args.results), "tokens_per_step": tokens,
                                      "masked_per_step": n_masked, "generator_hidden": g},
              "flops_formula": FLOPS_FORMULA, "model_flops_per_step": flops, "rounds": args.rounds, "rows": table}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1))
    for r in table:
        print(f"{r['path']:64s} {r['median_step_s']:8.3f} s {r.get('tokens_per_s', ''):>7} tok/s "
              f"x{r.get('speedup_vs_before', '')} {100 * r['share_of_bf16_matmul_rate']:.0f}% of bf16 matmul, "
              f"{100 * r['share_of_fastest_matmul_rate']:.0f}% of the fastest")
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
