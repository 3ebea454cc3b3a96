"""Beyond distillation: one size / speed / accuracy table of the teacher, a distilled student, and both pruned,
quantized, and pruned + quantized (issue #15).

python recipes/compression_table.py --scale smoke|small|paper [--output-dir runs/compression] [--tasks sst2]

1. a 3-layer (paper: 6-layer) student distilled from the scale's MLM teacher with bert_kd;
2. teacher and student fine-tuned on one GLUE task (the first of --tasks; default SST-2, smoke RTE) with the
   scale's grid, every seed's model kept;
3. every seed's fine-tuned model compressed: pruned (half the heads and half the FFN neurons, task-loss
   importance, in PRUNE[scale] steps with distillation from the unpruned fine-tuned model after each), int8
   (dynamic quantization of the Linear layers), and the student pruned then int8;
4. every model evaluated on the full dev set (mean ± std over seeds; the difference from its uncompressed
   source by paired bootstrap over dev examples and seeds, 95% interval), and measured on CPU in turns on
   the seed-0 models: batch-1 latency and batch-32 throughput (median of the passes), parameters, and bytes
   of weights on disk.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from bert_kd.distill import DistilConfig, run as run_bert_kd
from kd_core.compress.common import load_model, n_params, size_on_disk
from kd_core.compress.measure import interleaved_speed
from kd_core.compress.prune import PruneConfig, prune
from kd_core.compress.quantize import QuantizeConfig, load_quantized, run_quantize
from kd_core.files import atomic_write_text
from kd_core.glue.compare import Block, metric_of, paired_bootstrap
from kd_core.glue.finetune import evaluate, task_rows
from kd_core.glue.data import load_split
from kd_core.glue.grid import run_grid
from kd_core.glue.results import ModelResults
from kd_core.provenance import provenance
from kd_core.glue.tasks import get_task
from scales import distil_once, recipe_parser, setup_from_args, table_path
from kd_core.cli import script_exit

NAME = "compression"
# per scale: pruning steps, recovery steps after each, importance batches, batch size; latency passes, texts
PRUNE = {"smoke": dict(steps=1, recover_steps=2, batches=2, batch_size=8),
         "small": dict(steps=2, recover_steps=100, batches=16, batch_size=16),
         "paper": dict(steps=4, recover_steps=500, batches=32, batch_size=32)}
SPEED = {"smoke": (2, 32), "small": (5, 256), "paper": (5, 512)}


def seed_models(result: ModelResults, task: str, run_dir: Path) -> list[Path]:
    """The fine-tuned model of every seed of the chosen cell."""
    chosen = result.tasks[task].chosen
    return [run_dir / task / chosen / f"seed{r.seed}" / "model" for r in result.tasks[task].cells[chosen].runs]


def compressed(source: Path, out: Path, task: str, glue_dir: str | None, max_len: int, scale: str) -> dict[str, Path]:
    """{variant: directory}: the source, pruned, int8, pruned + int8 (each made once, then reused)."""
    paths = {"": source, "pruned": out / "pruned", "int8": out / "int8", "pruned + int8": out / "pruned_int8"}
    if not paths["pruned"].is_dir():
        prune(PruneConfig(model=str(source), output=str(paths["pruned"]), target_heads=0.5, target_ffn=0.5,
                          task=task, glue_dir=glue_dir, max_len=max_len, **PRUNE[scale]))
    for variant, origin in (("int8", source), ("pruned + int8", paths["pruned"])):
        if not paths[variant].is_dir():
            run_quantize(QuantizeConfig(model=str(origin), output=str(paths[variant])))
    return paths


def open_any(path: Path):
    """(model, tokenizer, parameters of its fp32 structure: int8 models hold theirs packed)."""
    info = path / "quantization.json"
    if info.is_file():
        return load_quantized(path), AutoTokenizer.from_pretrained(path), json.loads(info.read_text())["fp32_params"]
    model, tokenizer = load_model(str(path))
    return model, tokenizer, n_params(model)


def dev_texts(task, glue_dir: str | None, n: int) -> list[str]:
    return [e.text_a for e in load_split(task, task.dev_splits[0], glue_dir)[:n]]


def main(argv: list[str] | None = None) -> int:
    parser = recipe_parser(__doc__, NAME)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.output_dir)
    s = setup_from_args(args, default_tasks=["rte" if args.scale == "smoke" else "sst2"])
    task = get_task(s.tasks[0])
    grid = replace(s.grid, finetune=replace(s.grid.finetune, save_model=True))

    print("[1/4] distilled student", flush=True)
    layers = s.teacher_layers // 2
    distil_once(DistilConfig, run_bert_kd, None, [f"teacher={s.mlm_teacher}", f"data.corpus={s.corpus}",
                                                  f"student.num_layers={layers}", *s.student_train, *s.bert_kd],
                out / "student")

    print("[2/4] fine-tuning teacher and student", flush=True)
    sources = {}
    for name, path in (("teacher", s.mlm_teacher), ("student", str(out / "student" / "final"))):
        result = run_grid(path, [task], s.glue_dir, grid, out / "glue" / name, label=name)
        sources[name] = seed_models(result, task.name, out / "glue" / name)

    print("[3/4] pruning and quantizing every seed's model", flush=True)
    variants: dict[str, list[Path]] = {}
    for name, seeds in sources.items():
        for model_dir in seeds:
            for variant, path in compressed(model_dir, model_dir.parent / "compressed", task.name, s.glue_dir,
                                            grid.finetune.max_len, s.scale).items():
                if name == "student" or variant in ("", "pruned", "int8"):
                    variants.setdefault(f"{name} {variant}".strip(), []).append(path)

    print("[4/4] dev sets and CPU speed", flush=True)
    split = task.dev_splits[0]
    metric, score = metric_of(task, split)
    rows, predictions, models = {}, {}, {}
    for label, paths in variants.items():
        runs = []
        for path in paths:
            model, tokenizer, params = open_any(path)
            _, dev = task_rows(task, s.glue_dir, grid.finetune, tokenizer, {})
            runs.append(evaluate(model, tokenizer, task, dev, grid.finetune, torch.device("cpu")))
            if path is paths[0]:
                models[label], tokens = model, tokenizer
                rows[label] = {"params_m": params / 1e6, "mb": size_on_disk(path) / 1e6}
        values = [r["metrics"][metric] for r in runs]
        predictions[label] = [np.asarray(r["dev_examples"][split]["predictions"]) for r in runs]
        labels = np.asarray(runs[0]["dev_examples"][split]["labels"])
        rows[label].update(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                           seeds=len(values))
    for label in rows:
        source = label.split(" ")[0]
        if label != source:
            rows[label]["diff"] = paired_bootstrap([Block(score, labels, predictions[label], predictions[source])])
    passes, n_texts = SPEED[s.scale]
    texts = dev_texts(task, s.glue_dir, n_texts)
    for label, speed in interleaved_speed(models, tokens, texts, passes, grid.finetune.max_len).items():
        rows[label].update(speed)

    path = table_path(args, NAME)
    prov = provenance(f"python recipes/{Path(__file__).name} " + " ".join(sys.argv[1:] if argv is None else argv))
    prov.update(scale=s.scale, seeds=grid.seeds, wall_s=round(time.perf_counter() - t0, 1), torch=torch.__version__,
                threads=torch.get_num_threads())
    text = "\n".join([f"# Distilled, pruned and quantized: size, speed and {task.name} dev {metric}", "",
                      *table(rows, metric, passes, len(texts)), "", *notes(s, task.name, layers), "",
                      "Provenance: " + json.dumps(prov), ""])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"rows": rows, "provenance": prov}, indent=1, default=str))
    print(text)
    return 0


def table(rows: dict[str, dict], metric: str, passes: int, n_texts: int) -> list[str]:
    lines = [f"| model | parameters (M) | weights on disk (MB) | CPU batch-1 latency (ms) | CPU batch-32 throughput "
             f"(examples/s) | dev {metric} (mean ± std, seeds) | difference from uncompressed [95% interval] |",
             "|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        diff = r.get("diff")
        interval = f"{diff['diff']:+.1f} [{diff['low']:+.1f}, {diff['high']:+.1f}]" if diff else "–"
        lines.append(f"| {label} | {r['params_m']:.2f} | {r['mb']:.2f} | {r['latency_ms']:.2f} | {r['throughput']:.0f} "
                     f"| {r['mean']:.1f} ± {r['std']:.1f} ({r['seeds']}) | {interval} |")
    return lines + ["", f"Speed: the seed-0 models measured in turns over {n_texts} dev sentences, median of {passes} "
                        "passes each; int8 rows count the parameters of their fp32 structure."]


def notes(s, task: str, layers: int) -> list[str]:
    cfg = PRUNE[s.scale]
    return [f"Student: {layers} layers distilled with bert_kd (the scale's budget). Pruned: half the attention heads "
            f"and half the FFN neurons removed by task-loss importance (E_x |dL/dm| per unit, over all layers), "
            f"{cfg['steps']} step(s) of {cfg['batches']} batches of {cfg['batch_size']}, each followed by "
            f"{cfg['recover_steps']} distillation steps from the unpruned fine-tuned model (logits KL + hidden MSE). "
            "int8: torch dynamic quantization of every Linear layer (x86/fbgemm). Differences: paired bootstrap "
            f"over {task} dev examples and seeds, against the same model uncompressed.",
            f"Setup: {s.description}."]


if __name__ == "__main__":
    sys.exit(script_exit(main))
