"""DistilBERT Table 3, size and speed: parameters and the CPU time of a full pass over the STS-B dev set
at batch size 1, teacher vs students, next to the paper's quoted rows.

python recipes/distilbert_table3.py --scale smoke|small|paper [--models DIR_OR_NAME ...] [--glue-dir DIR]
                                    [--limit N] [--results results/distilbert_table3.md]

paper: bert-base-uncased and distilbert-base-uncased by hub name (internet needed).
small: all-MiniLM-L6-v2 (6 layers) and students built from it by bert_kd's student construction
       (3 layers, same architecture and DistilBERT-shaped); speed depends on shape, not on training.
smoke: a tiny random BERT and its 1-layer student on 20 pairs (for the tests).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path


import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from kd_core.files import atomic_write_text
from kd_core.glue.data import read_tsv
from kd_core.latency import interleaved_latency
from kd_core.provenance import provenance
from kd_core.glue.tasks import get_task
from kd_core.student import StudentConfig, build_student, load_masked_lm
from kd_core.cli import script_exit
from scales import check_results_target, table_path

ROOT = Path(__file__).resolve().parents[1]
QUOTED = [("ELMo (paper, quoted)", 180, 895), ("BERT-base (paper, quoted)", 110, 668),
          ("DistilBERT (paper, quoted)", 66, 410)]


def small_models(workdir: Path) -> list[tuple[str, str]]:
    from kd_core.assets import minilm_dir

    teacher_dir = minilm_dir()
    teacher = load_masked_lm(str(teacher_dir), new_head=True)  # encoder + a fresh MLM head; only the encoder is timed
    out = [("all-MiniLM-L6-v2 (6 layers)", str(teacher_dir))]
    for arch in ("same", "distilbert"):
        student, _, _ = build_student(teacher, StudentConfig(arch=arch, num_layers=3, layers="every_other"))
        path = workdir / f"student-3-{arch}"
        student.save_pretrained(path)
        AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(path)
        out.append((f"3-layer student ({'BERT' if arch == 'same' else 'DistilBERT'}-shaped)", str(path)))
    return out


def smoke_models(workdir: Path) -> list[tuple[str, str]]:
    from kd_core.toy import make_tokenizer

    tokenizer = make_tokenizer(workdir / "tokenizer")
    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64))
    out = []
    for name, model in (("tiny teacher (2 layers)", teacher),
                        ("tiny student (1 layer)", build_student(teacher, StudentConfig(num_layers=1, layers=[1]))[0])):
        path = workdir / name.split()[1]
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        out.append((name, str(path)))
    return out


def stsb_pairs(glue_dir: str | None, limit: int) -> list[tuple[str, str]]:
    if glue_dir and (Path(glue_dir) / "STS-B" / "dev.tsv").is_file():
        pairs = [(e.text_a, e.text_b) for e in read_tsv(get_task("stsb"), glue_dir, "dev")]
    else:
        pairs = [("the king saw the whale", "the old man saw the sea")] * 20
    return pairs[:limit] if limit else pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["smoke", "small", "paper"], default="small")
    parser.add_argument("--models", nargs="*", help="model directories or hub names (override the scale's)")
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--limit", type=int, default=0, help="time only the first N pairs (0: all 1,500)")
    parser.add_argument("--output-dir", default="runs/distilbert_table3")
    parser.add_argument("--results", help="also the committed table, e.g. results/distilbert_table3.md (default: only "
                                          "<output-dir>/distilbert_table3.md; never at smoke scale)")
    args = parser.parse_args(argv)
    check_results_target(args.scale, args.results)
    limit = args.limit or (20 if args.scale == "smoke" else 0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.models:
            models = [(Path(m).name or m, m) for m in args.models]
        elif args.scale == "paper":
            models = [("BERT-base", "bert-base-uncased"), ("DistilBERT", "distilbert-base-uncased")]
        elif args.scale == "small":
            models = small_models(Path(tmp))
        else:
            models = smoke_models(Path(tmp))
        pairs = stsb_pairs(args.glue_dir, limit)
        rows = list(interleaved_latency(dict(models), pairs, passes=3).items())
    lines = ["| model | # param. (millions) | inference time (s), median of 3 interleaved passes | passes (s) | "
             "ms per pair | speed vs first row (median of per-pass ratios) |", "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {r['params_m']:.2f} | {r['seconds']:.1f} | {', '.join(map(str, r['passes']))} | "
              f"{r['ms_per_pair']:.2f} | {r['speedup']:.2f}x |" for label, r in rows]
    lines += [f"| {label} | {params} | {seconds} | – | – | – |" for label, params, seconds in QUOTED]
    prov = provenance("python recipes/distilbert_table3.py " + " ".join(sys.argv[1:] if argv is None else argv))
    prov.update(threads=torch.get_num_threads(), torch=torch.__version__, pairs=len(pairs),
                processor=platform.processor() or platform.machine())
    text = (f"# DistilBERT Table 3 at {args.scale} scale: size and CPU speed (STS-B dev, batch size 1)\n\n"
            + "\n".join(lines) + "\n\nEncoders only (no task head), fp32, `torch.inference_mode`, inputs tokenized "
            "beforehand (max length 128), 5 warm-up pairs not timed. The quoted rows are the paper's (Sanh et "
            "al. 2019, Table 3), on their CPU: compare ratios, not seconds.\n\nProvenance: " + json.dumps(prov) + "\n")
    path = table_path(args, "distilbert_table3")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(script_exit(main))
