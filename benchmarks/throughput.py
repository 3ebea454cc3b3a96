"""GPU throughput of distillation steps: ours vs the plain loop a user would write with HF models.

python benchmarks/throughput.py [--seqs 128 512] [--precisions bf16 fp16] [--steps 10] [--results results/throughput]

Cases (random weights; speed does not depend on them):
- bert:    BERT-base-shaped teacher (12 x 768, vocab 30522) -> 6-layer student, DistilBERT objective
           (5 L_ce + 2 L_mlm + 1 L_cos, T = 2)
- electra: ELECTRA-base-shaped discriminator teacher (12 x 768) -> 6-layer discriminator, frozen
           generator (12 x 256); L_ce + L_hid + L_emb + L_out + L_cos + L_kl (att off: see `electra+att`)
Paths: "plain" = HF forward with full-vocabulary logits everywhere, eager attention, autocast,
torch AdamW (for ELECTRA: generator + both discriminators, all outputs); "ours" = the objective
through Engine.step (SDPA unless an attention loss needs maps, heads only where needed, fused AdamW).
MFU = model FLOPs / (step time x peak); FLOPs counted as actually computed (formula printed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
from torch import nn
from transformers import (BertConfig, BertForMaskedLM, ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining)

from bert_kd.objective import DistillationObjective, DistilLossConfig
from kd_core.provenance import portable
from common import make_mlm_batch
from electra_kd.objective import ElectraLossConfig, ElectraObjective, loss_weights
from kd_core.config import load_config
from kd_core.engine import Engine, TrainConfig
from kd_core.student import StudentConfig, build_student

ROOT = Path(__file__).resolve().parents[1]
PEAK = {"bf16": 989.4e12, "fp16": 989.4e12}  # H100 SXM dense tensor-core peak (spec sheet)
VOCAB, HIDDEN, LAYERS, STUDENT_LAYERS = 30522, 768, 12, 6
FLOPS_FORMULA = ("step FLOPs = teacher fwd [2 N_t T + 4 L_t s d T] + student fwd+bwd [6 N_s T + 12 L_s s d T] "
                 "+ vocab heads [2 d V P_t (teacher) + 6 d V P_s (student)] (+ generator fwd for ELECTRA), "
                 "N = non-embedding parameters, T = tokens, s = sequence length, P = positions where logits are computed")


def non_embedding_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n and "lm_head" not in n
               and "decoder" not in n and "vocab_projector" not in n)


def encoder_flops(n_params: int, layers: int, seq: int, d: int, tokens: int, train: bool) -> float:
    mult = 3 if train else 1
    return mult * (2 * n_params * tokens + 4 * layers * seq * d * tokens)


def timed(fn, steps: int) -> list[float]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


# ---- the plain loops -------------------------------------------------------------------------------------
def backward_and_step(loss, student, opt, scaler) -> None:
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def plain_bert_step(teacher, student, opt, scaler, batch, dtype, T=2.0):
    with torch.autocast("cuda", dtype=dtype):
        with torch.no_grad():
            t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        s = student(**batch, output_hidden_states=True)
        ce = nn.functional.kl_div(nn.functional.log_softmax(s.logits.float() / T, -1),
                                  nn.functional.softmax(t.logits.float() / T, -1), reduction="batchmean") * T * T
        h_s, h_t = s.hidden_states[-1].flatten(0, 1), t.hidden_states[-1].flatten(0, 1)
        cos = nn.CosineEmbeddingLoss()(h_s, h_t, torch.ones(len(h_s), device=h_s.device))
        loss = 5 * ce + 2 * s.loss + cos
    backward_and_step(loss, student, opt, scaler)


def plain_electra_step(teacher, student, generator, opt, scaler, batch, dtype, T=2.0):
    with torch.autocast("cuda", dtype=dtype):
        with torch.no_grad():
            g = generator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            sample = torch.distributions.Categorical(logits=g.float()).sample()
            masked = batch["labels"] != -100
            corrupted = torch.where(masked, sample, batch["input_ids"])
            labels = (corrupted != torch.where(masked, batch["labels"], batch["input_ids"])).float()
            t = teacher(input_ids=corrupted, attention_mask=batch["attention_mask"], output_hidden_states=True)
        s = student(input_ids=corrupted, attention_mask=batch["attention_mask"], labels=labels,
                    output_hidden_states=True)
        mse = sum(nn.functional.mse_loss(s.hidden_states[i + 1], t.hidden_states[2 * i + 1]) for i in range(6)) / 6
        emb = nn.functional.mse_loss(s.hidden_states[0], t.hidden_states[0])
        h_s, h_t = s.hidden_states[-1].flatten(0, 1), t.hidden_states[-1].flatten(0, 1)
        cos = nn.CosineEmbeddingLoss()(h_s, h_t, torch.ones(len(h_s), device=h_s.device))
        p_t = torch.sigmoid(t.logits.float() / T)
        kl = nn.functional.binary_cross_entropy_with_logits(s.logits.float() / T, p_t) * T * T
        loss = s.loss + mse + emb + cos + kl
    backward_and_step(loss, student, opt, scaler)


# ---- cases -------------------------------------------------------------------------------------------------
def bert_models():
    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                         num_attention_heads=12, intermediate_size=4 * HIDDEN))
    student, layer_map, _ = build_student(teacher, StudentConfig(num_layers=STUDENT_LAYERS, layers="every_other"))
    return teacher, student, layer_map


def electra_models():
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, embedding_size=HIDDEN, max_position_embeddings=512)
    teacher = ElectraForPreTraining(ElectraConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=12,
                                                  intermediate_size=4 * HIDDEN, **common))
    generator = ElectraForMaskedLM(ElectraConfig(hidden_size=256, num_hidden_layers=LAYERS, num_attention_heads=4,
                                                 intermediate_size=1024, **common))
    student, layer_map, _ = build_student(teacher, StudentConfig(num_layers=STUDENT_LAYERS, layers="every_other"),
                                          model_class=ElectraForPreTraining)
    return teacher, student, generator, layer_map


OURS_OPTIONS: list[str] = []  # extra TrainConfig overrides for "ours" (--ours-set), e.g. compile=true


def engine_for(objective, precision, batch_size):
    train = load_config(TrainConfig, overrides=[f"batch_size={batch_size}", f"micro_batch_size={batch_size}",
                                                f"mixed_precision={precision}", "max_grad_norm=1.0", *OURS_OPTIONS])
    return Engine(train, objective, [], lambda rows, g: {}, f"/tmp/bench_throughput/{id(objective)}", train)


def run_case(kind: str, seq: int, precision: str, steps: int, tokens_per_step: int) -> list[dict]:
    device = torch.device("cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    batch_size = max(tokens_per_step // seq, 1)
    batch = make_mlm_batch(batch_size, seq, VOCAB, device)
    tokens = batch_size * seq
    n_masked = int((batch["labels"] != -100).sum())
    rows = []

    def record(path, times, flops):
        med = statistics.median(times)
        rows.append({"case": kind, "seq": seq, "precision": precision, "path": path, "batch": batch_size,
                     "step_ms": round(1000 * med, 2), "tokens_per_s": round(tokens / med),
                     "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                     "tflops": round(flops / med / 1e12, 1), "mfu": round(flops / med / PEAK[precision], 4)})
        print(json.dumps(rows[-1]), flush=True)

    if kind == "bert":
        teacher, student, layer_map = bert_models()
        nt, ns = non_embedding_params(teacher.bert), non_embedding_params(student.bert)
        base = encoder_flops(nt, LAYERS, seq, HIDDEN, tokens, False) + encoder_flops(ns, STUDENT_LAYERS, seq, HIDDEN, tokens, True)
        # plain: vocab logits at every position for both; ours: L_ce at every token (same), so same head FLOPs
        head_all = 2 * HIDDEN * VOCAB * tokens + 6 * HIDDEN * VOCAB * tokens
        teacher.to(device).eval()
        student.to(device).train()
        teacher.set_attn_implementation("eager")
        student.set_attn_implementation("eager")
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        torch.cuda.reset_peak_memory_stats()
        record("plain HF loop", timed(lambda: plain_bert_step(teacher, student, opt, scaler, batch, dtype), steps),
               base + head_all)
        del opt, scaler
        for label, restrict in (("ours (L_ce at all tokens)", False), ("ours (L_ce at masked tokens)", True)):
            teacher, student, layer_map = bert_models()
            obj = DistillationObjective(student, teacher, layer_map, {"ce": 5.0, "mlm": 2.0, "cos": 1.0},
                                        DistilLossConfig(temperature=2.0, restrict_ce_to_mask=restrict))
            engine = engine_for(obj, precision, batch_size)
            positions = n_masked if restrict else tokens
            heads = 2 * HIDDEN * VOCAB * positions + 6 * HIDDEN * VOCAB * positions
            torch.cuda.reset_peak_memory_stats()
            record(label, timed(lambda: engine.step([batch]), steps), base + heads)
            del engine, obj
    else:
        teacher, student, generator, layer_map = electra_models()
        nt, ns = non_embedding_params(teacher.electra), non_embedding_params(student.electra)
        ng = non_embedding_params(generator.electra)
        base = (encoder_flops(nt, LAYERS, seq, HIDDEN, tokens, False)
                + encoder_flops(ns, STUDENT_LAYERS, seq, HIDDEN, tokens, True)
                + encoder_flops(ng, LAYERS, seq, 256, tokens, False))
        gen_head_all, gen_head_masked = 2 * 256 * VOCAB * tokens, 2 * 256 * VOCAB * n_masked
        for m in (teacher, student, generator):
            m.to(device)
            m.set_attn_implementation("eager")
        teacher.eval()
        generator.eval()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        torch.cuda.reset_peak_memory_stats()
        record("plain HF loop", timed(lambda: plain_electra_step(teacher, student, generator, opt, scaler, batch, dtype),
                                      steps), base + gen_head_all)
        del opt, scaler
        for label, att in (("ours (att off)", 0.0), ("ours (with L_att)", 1.0)):
            teacher, student, generator, layer_map = electra_models()
            cfg = ElectraLossConfig(b1=1.0, b2=1.0, b3=1.0, mse_parts={"emb": 1.0, "out": 1.0, "hid": 1.0, "att": att})
            weights = loss_weights(cfg, True)
            obj = ElectraObjective(student, generator, weights, cfg, teacher, layer_map)
            engine = engine_for(obj, precision, batch_size)
            torch.cuda.reset_peak_memory_stats()
            record(label, timed(lambda: engine.step([batch]), steps), base + gen_head_masked)
            del engine, obj
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="*", default=["bert", "electra"])
    parser.add_argument("--seqs", nargs="*", type=int, default=[128, 512])
    parser.add_argument("--precisions", nargs="*", default=["bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens-per-step", type=int, default=16384)
    parser.add_argument("--results", default=str(ROOT / "results" / "throughput"))
    parser.add_argument("--ours-set", action="append", default=[], help="TrainConfig override for ours, e.g. compile=true")
    args = parser.parse_args()
    OURS_OPTIONS.extend(args.ours_set)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for kind in args.cases:
        for seq in args.seqs:
            for precision in args.precisions:
                rows.extend(run_case(kind, seq, precision, args.steps, args.tokens_per_step))
                torch.cuda.empty_cache()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    meta = {"command": portable("python benchmarks/throughput.py " + " ".join(os.sys.argv[1:])), "commit": commit or "unknown",
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "peak_flops": PEAK, "flops_formula": FLOPS_FORMULA, "steps_timed": args.steps,
            "tokens_per_step": args.tokens_per_step, "ours_options": args.ours_set}
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| case | seq | precision | path | batch | step ms | tokens/s | x plain | MFU | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    plain = {(r["case"], r["seq"], r["precision"]): r["tokens_per_s"] for r in rows if r["path"] == "plain HF loop"}
    for r in rows:
        ratio = r["tokens_per_s"] / plain[(r["case"], r["seq"], r["precision"])]
        lines.append(f"| {r['case']} | {r['seq']} | {r['precision']} | {r['path']} | {r['batch']} | {r['step_ms']} | "
                     f"{r['tokens_per_s']} | {ratio:.2f} | {100 * r['mfu']:.1f}% | {r['peak_mem_gib']} |")
    out.with_suffix(".md").write_text("# Distillation step throughput\n\n" + "\n".join(lines) + "\n\n"
                                      + "```\n" + json.dumps(meta, indent=1) + "\n```\n")
    print("\n".join(lines))
    print(FLOPS_FORMULA)


if __name__ == "__main__":
    main()
