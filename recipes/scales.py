"""What `--scale smoke|small|paper` means for the seed-table recipes, and the steps they share.

paper: the papers' models by hub name (bert-base-uncased, google/electra-base-*), a corpus you prepared
       (e.g. `python -m kd_core.data prepare --tokenizer bert-base-uncased --hf-dataset wikitext
       --hf-config wikitext-103-raw-v1 --output data/wikitext-103-128`), the recipe configs'
       own budgets (recipes/configs/*.yaml), the Greek report's GLUE grid; needs a GPU and internet.
small: the offline teachers of recipes/teachers.py (all-MiniLM-L6-v2, 6 layers, cached), the text of
       ../shared/data/corpus (or the vaderSentiment snippets) at 64 tokens, 300 steps x 16 rows per
       student, GLUE SST-2, MRPC and STS-B from ../shared/data/glue (or --glue-dir), 2,000 training
       examples, 1 epoch (STS-B 3), 3 fine-tuning seeds, full dev sets; the row a table's claim is about is
       distilled with 2 seeds; the teacher's GLUE results are cached beside the cached teacher.
smoke: a tiny random 6-layer BERT and ELECTRA, a generated corpus and a generated two-task GLUE;
       seconds, for the tests.
Each recipe states its layer lists for 12-layer (paper) and 6-layer (small, smoke) teachers, and the control
rows that give its comparisons meaning (truncated, not distilled; teacherless; random init), which it
reports as paired-bootstrap differences with 95% intervals (`kd_core.glue.compare.claims_table`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

from kd_core.files import atomic_write_text, seed_run_dirs
from kd_core.config import finished_with, load_config
from kd_core.glue.compare import macro_difference
from kd_core.glue.finetune import FinetuneConfig
from kd_core.glue.grid import GridConfig, run_grid
from kd_core.glue.results import ModelResults, pooled
from kd_core.glue.report import markdown_table
from kd_core.glue.tasks import get_task
from kd_core.plot import loss_curves
from kd_core.toy import write_tiny_glue
from kd_core.errors import UserError
from kd_core.metrics_log import recorded_wall_s
from kd_core.provenance import portable_paths, provenance

SHARED = ROOT.parent / "shared" / "data"
SCALES = ("smoke", "small", "paper")
SMALL_TEACHER_STEPS = None  # None: each teacher's calibrated recipe (recipes/teachers.py), gated; an int: a smoke build
SMALL_BATCH = ["train.batch_size=16", "train.micro_batch_size=16", "train.eval_batches=2"]
SMALL_TASK_EPOCHS = {"stsb": 3.0}  # after 1 epoch the 6-layer teacher's STS-B Pearson was 6.8 (3 epochs: 81.0)
TEACHERLESS_BERT = ["loss_weights={ce: 0.0, mlm: 1.0, cos: 0.0}"]  # bert_kd with the student's own MLM loss only


@dataclass
class Setup:
    scale: str
    mlm_teacher: str  # a BertForMaskedLM: directory or hub name
    electra_teacher: str  # an ElectraForPreTraining discriminator
    electra_generator: str  # its ElectraForMaskedLM generator
    corpus: str  # a prepared corpus directory (kd_core.data)
    glue_dir: str | None  # None: GLUE from the hub
    tasks: list[str]
    grid: GridConfig
    teacher_layers: int
    distill_seeds: int = 1  # distillation seeds of the row a table's claim is about (its rows are pooled)
    student_train: list[str] = field(default_factory=list)  # overrides for every student run at this scale
    bert_kd: list[str] = field(default_factory=list)  # and for bert_kd runs only
    description: str = ""


def small_corpus(workdir: Path) -> tuple[str, str]:
    """(prepared corpus, what text it is): ../shared/data/corpus, else the vaderSentiment snippets."""
    from kd_core.assets import minilm_dir, vader_text_file
    from kd_core.data import PrepareConfig, prepare

    if (SHARED / "corpus").is_dir():
        inputs, fmt, source = [str(SHARED / "corpus")], "auto", "WikiText-2 raw + Gutenberg (../shared/data)"
    else:
        inputs, fmt, source = [str(vader_text_file())], "lines", "vaderSentiment 3.3.2 snippets (PyPI)"
    corpus = workdir / "corpus"
    if not (corpus / "stats.json").is_file():
        prepare(PrepareConfig(tokenizer=str(minilm_dir()), inputs=inputs, text_format=fmt, output=str(corpus),
                              max_len=64))
    return str(corpus), source


def small_teacher(kind: str, corpus: str, steps: int | None = SMALL_TEACHER_STEPS) -> Path:
    """The cached offline teacher run directory (final/, card.json, and generator/ for electra): the teacher's own
    recipe (its batch, its steps) and gate, enforced (a teacher below it is an error). `steps` (an int) is a smoke
    build of that many steps: its gate is reported, not enforced (it cannot pass)."""
    from teachers import build_teacher

    if steps is None:
        return build_teacher(kind, corpus, gate="enforce")
    smoke = ([f"generator_mlm.train.max_steps={steps}", f"generator_mlm.head_steps={steps // 2}"] if kind == "electra"
             else [f"head_steps={steps // 2}"])
    return build_teacher(kind, corpus, steps, smoke, gate="report")


def smoke_assets(workdir: Path) -> dict[str, str]:
    """A tiny random 6-layer BERT MLM teacher, ELECTRA discriminator + generator, and a prepared corpus."""
    from kd_core.data import PrepareConfig, prepare
    from kd_core.toy import make_tokenizer, tiny_bert_teacher, tiny_electra, write_text_corpus

    paths = {"mlm": workdir / "mlm_teacher", "electra": workdir / "electra", "corpus": workdir / "corpus"}
    if not (paths["corpus"] / "stats.json").is_file():
        tokenizer = make_tokenizer(workdir / "tokenizer")
        tiny_bert_teacher(paths["mlm"], tokenizer, layers=6)
        tiny_electra(paths["electra"], tokenizer, layers=6)
        prepare(PrepareConfig(tokenizer=str(workdir / "tokenizer"), inputs=[str(write_text_corpus(workdir / "text.txt"))],
                              output=str(paths["corpus"]), max_len=32, valid_fraction=0.1, min_piece=8))
    return {k: str(v) for k, v in paths.items()}


def setup(scale: str, workdir: Path, glue_dir: str | None = None, corpus: str | None = None,
          tasks: list[str] | None = None, kinds: tuple[str, ...] = ("mlm",)) -> Setup:
    """Teachers (of `kinds`), corpus and GLUE for a scale; small builds what is missing (cached)."""
    if scale in ("smoke", "small"):
        workdir.mkdir(parents=True, exist_ok=True)
    if scale == "smoke":
        assets = smoke_assets(workdir / "assets")
        return Setup(scale, assets["mlm"], f"{assets['electra']}/discriminator", f"{assets['electra']}/generator",
                     corpus or assets["corpus"], glue_dir or str(write_tiny_glue(workdir / "glue")), tasks or ["rte", "stsb"],
                     GridConfig(lrs=[1e-3], batch_sizes=[16], seeds=2, finetune=FinetuneConfig(epochs=1, max_len=32)),
                     teacher_layers=6, distill_seeds=2, student_train=["train.max_steps=2", "train.batch_size=8",
                                                      "train.micro_batch_size=8", "train.eval_batches=1",
                                                      "train.eval_every=0", "train.mixed_precision=no"],
                     description="smoke: tiny random 6-layer teachers, generated corpus and tasks, 2 steps")
    if scale == "small":
        source = "a corpus given with --corpus"
        if corpus is None:
            corpus, source = small_corpus(workdir)
        mlm = small_teacher("mlm", corpus) if "mlm" in kinds else None
        electra = small_teacher("electra", corpus) if "electra" in kinds else None
        glue_dir = glue_dir or (str(SHARED / "glue") if (SHARED / "glue").is_dir() else None)
        precision = "bf16" if torch.cuda.is_available() else "no"
        return Setup(scale, str(mlm / "final") if mlm else "", str(electra / "final") if electra else "",
                     str(electra / "generator") if electra else "", corpus, glue_dir,
                     tasks or ["sst2", "mrpc", "stsb"],
                     GridConfig(lrs=[1e-4], batch_sizes=[32], seeds=3,
                                finetune=FinetuneConfig(epochs=1, max_train_examples=2000, task_epochs=SMALL_TASK_EPOCHS)),
                     teacher_layers=6, distill_seeds=2,
                     student_train=["train.max_steps=300", *SMALL_BATCH, "train.lr=2e-4", "train.warmup_ratio=0.1",
                                    "train.log_every=10", "train.eval_every=100", "train.save_every=100",
                                    f"train.mixed_precision={precision}"],
                     bert_kd=["loss.restrict_ce_to_mask=true"],  # vocabulary KL at masked positions: ~2x faster on CPU
                     description=f"small: offline all-MiniLM-L6-v2 teachers (recipes/teachers.py: gated, carded, "
                                 f"cached), text {source} at 64 tokens, 300 steps x 16 rows per student, "
                                 "L_ce (bert_kd) at masked positions only, GLUE fine-tuning on at most 2,000 training "
                                 "examples, 1 epoch (STS-B 3), lr 1e-4, batch 32, seeds 0-2, full dev sets")
    if scale == "paper":
        if corpus is None:
            raise UserError("--scale paper needs --corpus: prepare one first, e.g. python -m kd_core.data prepare "
                             "--tokenizer bert-base-uncased --hf-dataset wikitext --hf-config wikitext-103-raw-v1 "
                             "--output data/wikitext-103-128")
        return Setup(scale, "bert-base-uncased", "google/electra-base-discriminator", "google/electra-base-generator",
                     corpus, glue_dir, tasks or ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli"],
                     GridConfig(), teacher_layers=12,
                     description="paper: hub teachers, the recipe configs' budgets, the Greek report's GLUE grid "
                                 "(lr 1e-5/5e-5/1e-4 x batch 16/32 x 3 seeds)")
    raise UserError(f"unknown scale '{scale}'; choose one of {', '.join(SCALES)}")


def check_results_target(scale: str, results: str | None) -> None:
    """Only --results writes into results/ (the committed tables), and never at smoke scale: refused before any work."""
    if scale == "smoke" and results and Path(results).resolve().is_relative_to(ROOT / "results"):
        raise UserError(f"--results {results}: smoke-scale numbers never go into results/ (the committed tables); "
                        "give a path outside it, or run --scale small")


def table_path(args: argparse.Namespace, name: str) -> Path:
    """Where a recipe's table goes: --results when given, else <output-dir>/<name>.md."""
    return Path(args.results) if args.results else Path(args.output_dir) / f"{name}.md"


def setup_from_args(args: argparse.Namespace, default_tasks: list[str] | None = None,
                    kinds: tuple[str, ...] = ("mlm",), workdir: Path | None = None) -> Setup:
    """`setup` from a recipe_parser's arguments (--tasks, else `default_tasks`, else the scale's)."""
    check_results_target(args.scale, getattr(args, "results", None))
    tasks = args.tasks.split(",") if args.tasks else default_tasks
    seeds = getattr(args, "distill_seeds", None)
    if seeds is not None and seeds < 1:
        raise UserError(f"--distill-seeds {seeds}: give 1 or more")
    s = setup(args.scale, workdir or Path(args.output_dir), args.glue_dir, args.corpus, tasks, kinds)
    s.distill_seeds = seeds or s.distill_seeds
    return s


def distil_once(config_cls, run, cfg_file: str | Path | None, overrides: list[str], run_dir: Path,
                dry_run: bool = False):
    """Load a run's config (file + overrides) and train it unless it finished with this config (a finished run made
    with other settings is an error naming them); returns the config."""
    cfg = load_config(config_cls, cfg_file, overrides)
    if dry_run:
        print(f"== {run_dir}: {cfg_file or 'defaults'} + {' '.join(overrides)}")
    elif not finished_with(run_dir, cfg):
        run(cfg, str(run_dir), resume=True)
    return cfg


def evaluate_on_glue(model: str, s: Setup, run_dir: Path, label: str, grid: GridConfig | None = None) -> ModelResults:
    return run_grid(model, [get_task(t) for t in s.tasks], s.glue_dir, grid or s.grid, run_dir / "glue", label=label)


def distilled_row(config_cls, run, cfg_file: str | Path | None, overrides: list[str], run_dir: Path, s: Setup,
                  label: str, seeds: int = 1, dry_run: bool = False) -> ModelResults | None:
    """A distilled row: `seeds` distillation runs (train.seed 0.. ; seed k > 0 in <run_dir>_seed<k>), each
    fine-tuned with the scale's seeds; several are pooled into one row (distillation x fine-tuning seeds)."""
    dirs = seed_run_dirs(run_dir, seeds)
    for k, directory in enumerate(dirs):
        distil_once(config_cls, run, cfg_file, [*overrides, f"train.seed={k}"] if k else overrides, directory, dry_run)
    if dry_run:
        return None
    results = [evaluate_on_glue(str(d / "final"), s, d, label) for d in dirs]
    return pooled(results, label)


def teacher_on_glue(teacher: str, s: Setup, out: Path, label: str) -> ModelResults:
    """The teacher's GLUE results; at small scale cached beside the cached teacher, per task list and grid, so
    every recipe on the same teacher shares one fine-tuning of it."""
    glue = str(Path(s.glue_dir).resolve()) if s.glue_dir else None
    key = hashlib.sha256(json.dumps([sorted(s.tasks), asdict(s.grid), glue]).encode()).hexdigest()[:12]
    where = Path(teacher).parent / f"glue-{key}" if s.scale == "small" else out
    return evaluate_on_glue(teacher, s, where, label)


def compute_seconds(out: Path, results: list[ModelResults]) -> dict:
    """Wall time summed over every part that produced a table, whichever process ran it (a rerun over finished
    runs reads theirs): training runs under `out` and the rows' models (their logged wall_s, summed over
    resumes) and every fine-tuning run of the rows (result.json)."""
    runs = {p.parent for p in out.rglob("metrics.jsonl") if (p.parent / "final").is_dir()}
    runs |= {Path(m).parent for r in results for m in r.models if (Path(m).parent / "metrics.jsonl").is_file()}
    training = {run: recorded_wall_s(run) for run in runs}
    by_task: dict[str, float] = {}
    for r in results:
        for name, task in r.tasks.items():
            runs = [run for cell in task.cells.values() for run in cell.runs]
            by_task[name] = round(by_task.get(name, 0.0) + sum(run.record.get("wall_s", 0.0) for run in runs), 1)
    return {"training_s": round(sum(v for v in training.values() if v), 1),
            "finetuning_s": round(sum(by_task.values()), 1), "finetuning_s_by_task": by_task,
            "training_runs_without_a_record": sum(v is None for v in training.values())}


def recipe_parser(doc: str, name: str, table: bool = True, dry_run: bool = False,
                  distill_seeds: bool = False) -> argparse.ArgumentParser:
    """The arguments every seed-table recipe takes; `name` is its script's stem."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=SCALES, default="small")
    parser.add_argument("--output-dir", default=f"runs/{name}")
    parser.add_argument("--glue-dir", help="GLUE folders (default: ../shared/data/glue, else the hub)")
    parser.add_argument("--corpus", help="a prepared corpus (default: the scale's)")
    parser.add_argument("--tasks", help="comma-separated GLUE tasks (default: the scale's)")
    if distill_seeds:
        parser.add_argument("--distill-seeds", type=int, help="distillation seeds of the row the table's claim is "
                                                              "about (default: the scale's: smoke 2, small 2, paper 1)")
    if table:
        parser.add_argument("--results", help=f"also the committed table, e.g. results/{name}.md (default: only "
                                               f"<output-dir>/{name}.md; never at smoke scale)")
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="print every run's config source and stop")
    return parser


def write_table(args: argparse.Namespace, name: str, title: str, results: list[ModelResults], references: list[dict],
                notes: list[str], s: Setup, argv: list[str] | None, t0: float) -> str:
    """The Markdown table (ours, then the quoted rows), notes, and provenance, written atomically to
    --results, else <output-dir>/<name>.md (only --results writes into results/)."""
    argv = sys.argv[1:] if argv is None else argv
    path = table_path(args, name)
    prov = provenance(f"python recipes/{name}.py " + " ".join(argv))
    prov.update(scale=s.scale, seeds=s.grid.seeds, distill_seeds=s.distill_seeds,
                wall_s=round(time.perf_counter() - t0, 1), compute=compute_seconds(Path(args.output_dir), results),
                torch=torch.__version__)
    runs = [(Path(r.model).parent, r.label) for r in results if (Path(r.model).parent / "metrics.jsonl").is_file()]
    figure = [f"Loss curves of the distilled runs: {path.with_suffix('.png').name}.", ""] if runs else []
    text = "\n".join([f"# {title}", "", markdown_table(results, references), "", *notes, "", *figure,
                      f"Setup: {s.description}.", "", "Provenance: " + json.dumps(prov), ""])
    path.parent.mkdir(parents=True, exist_ok=True)
    if runs:
        loss_curves([d for d, _ in runs], path.with_suffix(".png"), [label for _, label in runs])
    atomic_write_text(path, text)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"results": [portable_paths(r.to_json()) for r in results],
                                                             "references": references, "provenance": prov}, indent=1))
    return text


def quoted_macro(scores: dict[str, dict[str, float]], tasks: list[str]) -> float:
    """A quoted row's macro over tasks, as ours is scored (kd_core.glue.results): each task's metrics averaged, then
    the tasks."""
    return float(np.mean([np.mean(list(scores[t].values())) for t in tasks]))


def ordering_note(results: list[ModelResults], references: list[dict], pairs: list[tuple[str, str]]) -> str:
    """Does our ranking of methods (by macro) agree with the quoted one on the same tasks? With WNLI among them,
    also without it (71 dev examples: a single model's WNLI moves its macro by points)."""
    common = [t for t in results[0].tasks if all(t in ref["scores"] for ref in references)]
    if not common:
        return "The quoted rows share no task with ours: no ordering to compare."
    task_sets = [common] + ([[t for t in common if t != "wnli"]] if "wnli" in common and len(common) > 1 else [])
    sentences = []
    for tasks in task_sets:
        ours = {r.label: r.restricted(tasks).score for r in results}
        quoted = {ref["label"]: quoted_macro(ref["scores"], tasks) for ref in references}
        our_order = sorted(pairs, key=lambda p: -ours[p[0]])
        paper_order = sorted(pairs, key=lambda p: -quoted[p[1]])
        ranking = " > ".join(f"{p[0]} ({ours[p[0]]:.1f})" for p in our_order)
        paper = " > ".join(f"{p[1]} ({quoted[p[1]]:.1f})" for p in paper_order)
        verdict = "agrees with" if [p[0] for p in our_order] == [p[0] for p in paper_order] else "DISAGREES with"
        sentences.append(f"Ordering by macro over {', '.join(tasks)}: ours {ranking}; this {verdict} the quoted "
                         f"ordering {paper}{significance_of(results, [p[0] for p in our_order], tasks)}.")
    return " ".join(sentences)


def significance_of(results: list[ModelResults], order: list[str], tasks: list[str]) -> str:
    """Each step of our ranking as a paired-bootstrap difference in macro (95% interval); an ordering only
    counts where the interval excludes 0. Empty without per-example predictions (older runs)."""
    by_label = {r.label: r for r in results}
    if not all(by_label[label].has_predictions(tasks) for label in order):
        return " (raw means; no per-example predictions to test the differences)"
    steps = []
    for high, low in zip(order, order[1:]):
        d = macro_difference(by_label[high], by_label[low], tasks)
        steps.append(f"{high} - {low} = {d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"
                     + ("" if d["significant"] else f" not resolved (detectable: {d['mde']:.1f})"))
    unresolved = sum("not resolved" in step for step in steps)
    return (f"; bootstrap over dev examples and runs, 95% intervals: {'; '.join(steps)}"
            + (f" ({unresolved} of {len(steps)} steps not resolved by this data)" if unresolved else ""))
