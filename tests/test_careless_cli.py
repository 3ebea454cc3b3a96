"""Every CLI fed what a careless user feeds it, through the real command in a subprocess (issue 24; the
unwritable-output cases call each CLI's main() in process):
a result that used to be silently wrong is now right or one `error:` line; a command that used to lose a file is
refused with the file untouched; one that used to end in a traceback is one `error:` line and exit 2.

The cases run two at a time, once per module; each is judged by its exit status, the fragment its output must
hold, the paths that must be byte for byte as before, and (for the silent ones) a check of the result itself;
a command that succeeds prints no transformers load report or load/save progress bars."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from helpers import tiny_pretrain_config, write_config
from kd_core import pretrain
from kd_core.checkpoint import complete_checkpoints
from kd_core.metrics_log import read_metrics
from kd_core.toy import tiny_bert_teacher, tiny_electra, write_text_corpus, write_tiny_glue

ROOT = Path(__file__).resolve().parents[1]


def _has_eval(out: Path) -> bool:
    return any("eval/loss/total" in r for r in read_metrics(out / "metrics.jsonl"))


def _nothing_resumable(out: Path) -> bool:
    return not complete_checkpoints(out) and any(p.name.endswith(".nonfinite") for p in out.iterdir())


def _scored_some_tokens(stdout: str) -> bool:
    return all(score["masked_tokens"] > 0 for line in stdout.splitlines() if line.startswith("{")
               for score in json.loads(line).values())


@dataclass
class Case:
    name: str
    kind: str  # silent | lost | traceback: the class of failure the case used to show
    argv: list[str]  # after `python`, with {placeholders}
    code: int
    says: str  # in the one `error:` line (code 2), or in stdout (code 0)
    untouched: tuple[str, ...] = ()  # placeholders of paths that must not change
    check: tuple[str, Callable[[Path | str], bool]] | None = None  # (placeholder or "stdout", predicate)


PRETRAIN = ["-m", "kd_core.pretrain", "--config", "{pretrain}"]
DISTIL = ["-m", "bert_kd", "distill", "--config", "{bert_cfg}"]
GLUE = ["-m", "kd_core.glue", "--model", "{classifier}", "--tasks", "rte", "--seeds", "1", "--lrs", "1e-3",
        "--batch-sizes", "8", "--epochs", "1"]
UNWRITABLE = [  # (module whose main() is the CLI, argv whose output is {unwritable}/...)
    ("kd_core.data.__main__", ["prepare", "--tokenizer", "{tok}", "--input", "{docs}", "--max-len", "32",
                               "--output", "{unwritable}/corpus"]),
    ("kd_core.pretrain", [*PRETRAIN[2:], "--output-dir", "{unwritable}/run"]),
    ("bert_kd.__main__", ["extract", "--teacher", "{bert}", "--layers", "0,1", "--output", "{unwritable}/student"]),
    ("bert_kd.__main__", [*DISTIL[2:], "--output-dir", "{unwritable}/run"]),
    ("electra_kd.__main__", ["distill", "--config", "{electra_cfg}", "--output-dir", "{unwritable}/run"]),
    ("kd_core.glue.__main__", [*GLUE[2:], "--glue-dir", "{glue}", "--output-dir", "{unwritable}/glue"]),
    ("kd_core.compress.__main__", ["quantize", "--model", "{classifier}", "--output", "{unwritable}/int8"]),
    ("kd_core.plot", ["{finished}", "--output", "{unwritable}/curves.png"]),
    ("greek_table1", ["--scale", "smoke", "--output-dir", "{unwritable}/greek"]),  # a recipe (script_exit)
]
CASES = [
    # ---- silently wrong before
    Case("held-out split smaller than one global batch is evaluated", "silent",
         [*PRETRAIN, "--set", "data.corpus={small_heldout}", "--output-dir", "{tmp}/small_heldout_run"], 0,
         "evaluated in batches of", check=("{tmp}/small_heldout_run", _has_eval)),
    Case("blow-up says its state does not evaluate finite and saves none to resume", "silent",
         [*PRETRAIN, "--set", "train.lr=1e10", "--set", "train.save_every=4", "--output-dir", "{tmp}/blowup"], 2,
         "do not evaluate finite", check=("{tmp}/blowup", _nothing_resumable)),
    Case("resuming a finished run adds no eval row", "silent", [*PRETRAIN, "--output-dir", "{finished}", "--resume"],
         0, "already finished at step 8", untouched=("{finished}/metrics.jsonl",)),
    Case("resuming a finished run with a new lr is refused (config.yaml would record an lr that trained nothing)",
         "silent", [*PRETRAIN, "--output-dir", "{finished_copy}", "--resume", "--set", "train.lr=1e-5"], 2,
         "would change nothing that was trained", untouched=("{finished_copy}",)),
    Case("resuming after the teacher moved compares its content", "silent",
         [*DISTIL, "--set", "teacher={teacher_moved}", "--output-dir", "{distil_a}", "--resume"], 0,
         "teacher: "),
    Case("resuming on a teacher changed in place is refused", "silent",
         [*DISTIL, "--output-dir", "{distil_b}", "--resume"], 2, "teacher", untouched=("{distil_b}",)),
    Case("prepare with a tokenizer folder lacking its vocabulary", "silent",
         ["-m", "kd_core.data", "prepare", "--tokenizer", "{no_vocab}", "--input", "{docs}", "--max-len", "32",
          "--output", "{tmp}/no_vocab_corpus"], 2, "has no vocabulary"),
    Case("prepare on text the tokenizer cannot read", "silent",
         ["-m", "kd_core.data", "prepare", "--tokenizer", "{tok}", "--input", "{foreign}", "--max-len", "32",
          "--min-chars", "0", "--max-non-alnum", "1", "--output", "{tmp}/foreign_corpus"], 2, "are [UNK]"),
    Case("mlm_eval on a split smaller than a batch", "silent",
         ["-m", "kd_core.mlm_eval", "--model", "{bert}", "--corpus", "{small_heldout}"], 0, "masked_accuracy",
         check=("stdout", _scored_some_tokens)),
    # ---- lost files before
    Case("extract onto its teacher", "lost",
         ["-m", "bert_kd", "extract", "--teacher", "{bert}", "--layers", "0,1", "--output", "{bert}"], 2,
         "overlaps --teacher", untouched=("{bert}",)),
    Case("extract into a run dir", "lost",
         ["-m", "bert_kd", "extract", "--teacher", "{bert}", "--layers", "0,1", "--output", "{finished_copy}",
          "--overwrite"], 2, "holds something else", untouched=("{finished_copy}",)),
    Case("distil with --overwrite into the run dir that holds its teacher", "lost",
         [*DISTIL, "--set", "teacher={finished_copy}/final", "--output-dir", "{finished_copy}", "--overwrite"], 2,
         "overlaps teacher=", untouched=("{finished_copy}",)),
    Case("resume with the checkpoint renamed and final/ deleted", "lost",
         [*PRETRAIN, "--output-dir", "{renamed}", "--resume"], 2, "holds a run (checkpoint-8-backup/",
         untouched=("{renamed}",)),
    Case("plot onto a run's metrics", "lost", ["-m", "kd_core.plot", "{finished_copy}", "--output",
                                               "{finished_copy}/metrics.jsonl"], 2, "give an image file",
         untouched=("{finished_copy}",)),
    # ---- tracebacks before
    Case("a teacher with a NaN weight", "traceback", [*DISTIL, "--set", "teacher={nan_teacher}", "--output-dir",
                                                      "{tmp}/nan_run"], 2, "non-finite (NaN or inf) weights"),
    Case("a GLUE TSV in latin-1", "traceback", [*GLUE, "--glue-dir", "{latin1_glue}", "--output-dir", "{tmp}/g1"], 2,
         "not UTF-8"),
    Case("GLUE from the hub, offline", "traceback", [*GLUE, "--output-dir", "{tmp}/g2"], 2, "give --glue-dir"),
]


def _digest(path: Path) -> str:
    # TensorBoard events and the lock (which names the last pid to hold it) are not the user's files
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".lock" and
                   "tb" not in p.relative_to(path).parts) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + f.read_bytes())
    return h.hexdigest()


def _unwritable(tmp: Path) -> Path:
    """A folder no command may create anything in: /sys refuses even root (EPERM), a 0o500 folder anyone else."""
    if os.geteuid() == 0:
        return Path("/sys/electra-kd-unwritable")
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked


@pytest.fixture(scope="module")
def assets(tiny_corpus, tiny_tokenizer, tiny_tokenizer_dir, tmp_path_factory) -> dict:
    from bert_kd.distill import DistilConfig, run as distil
    from kd_core.config import load_config
    from kd_core.data import PrepareConfig, prepare
    from transformers import AutoModelForSequenceClassification

    tmp = tmp_path_factory.mktemp("careless")
    docs = write_text_corpus(tmp / "docs.txt")
    prepare(PrepareConfig(tokenizer=str(tiny_tokenizer_dir), inputs=[str(docs)], output=str(tmp / "small_heldout"),
                          max_len=32, valid_fraction=0.02, min_piece=8))  # 6 held-out rows, global batch 8
    (tmp / "foreign.txt").write_text("".join(f"这是第{i}段中文文本，用来测试分词器。\n\n" for i in range(40)))
    (tmp / "no_vocab").mkdir()
    shutil.copy(tiny_tokenizer_dir / "tokenizer_config.json", tmp / "no_vocab")
    bert = tiny_bert_teacher(tmp / "bert", tiny_tokenizer)
    with torch.no_grad():
        bert.bert.encoder.layer[3].output.dense.weight[0, 0] = float("nan")  # a layer a 2-layer student does not copy
    bert.save_pretrained(tmp / "nan_teacher")
    tiny_tokenizer.save_pretrained(tmp / "nan_teacher")
    tiny_electra(tmp / "electra", tiny_tokenizer)
    AutoModelForSequenceClassification.from_pretrained(tmp / "bert", num_labels=2).save_pretrained(tmp / "classifier")
    tiny_tokenizer.save_pretrained(tmp / "classifier")
    write_tiny_glue(tmp / "glue")
    latin1 = tmp / "latin1_glue" / "RTE"
    latin1.mkdir(parents=True)
    for split in ("train", "dev"):
        text = (tmp / "glue" / "RTE" / f"{split}.tsv").read_text().replace("whale", "baleine café")
        (latin1 / f"{split}.tsv").write_bytes(text.encode("latin-1"))

    cfg = tiny_pretrain_config(tiny_corpus, max_steps=8, save_every=4)
    pretrain.run(cfg, str(tmp / "finished"))
    for name in ("renamed", "finished_copy"):
        shutil.copytree(tmp / "finished", tmp / name)
    (tmp / "renamed" / "checkpoint-8").rename(tmp / "renamed" / "checkpoint-8-backup")
    shutil.rmtree(tmp / "renamed" / "final")
    shutil.rmtree(tmp / "renamed" / "checkpoint-4")

    common = (f"data: {{corpus: {tiny_corpus}}}\nstudent: {{num_layers: 2}}\n"
              "train: {max_steps: 4, save_every: 2, batch_size: 8, micro_batch_size: 8}\n")
    shutil.copytree(tmp / "bert", tmp / "teacher")
    (tmp / "bert.yaml").write_text(f"teacher: {tmp / 'teacher'}\n" + common)
    (tmp / "electra.yaml").write_text(f"teacher: {tmp / 'electra' / 'discriminator'}\n"
                                      f"generator: {{path: {tmp / 'electra' / 'generator'}}}\n" + common)
    distil(load_config(DistilConfig, tmp / "bert.yaml"), str(tmp / "distil"))
    for name in ("distil_a", "distil_b"):  # each resumes at step 2
        shutil.copytree(tmp / "distil", tmp / name)
        shutil.rmtree(tmp / name / "checkpoint-4")
        shutil.rmtree(tmp / name / "final")
    shutil.move(tmp / "teacher", tmp / "teacher_moved")
    tiny_bert_teacher(tmp / "teacher", tiny_tokenizer, seed=1)  # same path, other weights
    values = {"tmp": tmp, "docs": docs, "tok": tiny_tokenizer_dir, "no_vocab": tmp / "no_vocab",
              "foreign": tmp / "foreign.txt", "small_heldout": tmp / "small_heldout", "bert": tmp / "bert",
              "nan_teacher": tmp / "nan_teacher", "classifier": tmp / "classifier", "glue": tmp / "glue",
              "latin1_glue": tmp / "latin1_glue", "finished": tmp / "finished", "renamed": tmp / "renamed",
              "finished_copy": tmp / "finished_copy", "distil_a": tmp / "distil_a", "distil_b": tmp / "distil_b",
              "teacher_moved": tmp / "teacher_moved", "bert_cfg": tmp / "bert.yaml", "electra_cfg": tmp / "electra.yaml",
              "pretrain": write_config(cfg, tmp / "pretrain.yaml"), "unwritable": _unwritable(tmp)}
    return values


@pytest.fixture(scope="module")
def careless(assets):
    values = assets
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")

    def run(case: Case):
        argv = [a.format(**values) for a in case.argv]
        before = {p: _digest(Path(p.format(**values))) for p in case.untouched}
        proc = subprocess.run([sys.executable, *argv], env=env, cwd=ROOT, capture_output=True, text=True)
        after = {p: _digest(Path(p.format(**values))) for p in case.untouched}
        return proc, [p for p in before if before[p] != after[p]]

    with ThreadPoolExecutor(2) as pool:
        outcomes = dict(zip((c.name for c in CASES), pool.map(run, CASES)))
    return outcomes, values


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}: {c.name}" for c in CASES])
def test_careless_use_is_right_or_one_error_line(careless, case):
    outcomes, values = careless
    proc, changed = outcomes[case.name]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == case.code, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    if case.code == 2:
        assert len(errors) == 1 and case.says in errors[0], proc.stderr[-3000:]
    else:
        assert not errors and case.says in proc.stdout, proc.stdout[-3000:]
        noise = [n for n in ("LOAD REPORT", "Loading weights", "Writing model shards") if n in proc.stderr]
        assert not noise, f"transformers noise on stderr: {noise}"
    assert not changed, f"{changed} changed"
    if case.check:
        where, holds = case.check
        assert holds(proc.stdout if where == "stdout" else Path(where.format(**values))), proc.stdout[-2000:]


@pytest.mark.parametrize("module,argv", UNWRITABLE, ids=[f"{m} {a[0]}" for m, a in UNWRITABLE])
def test_an_unwritable_output_is_one_error_line_in_every_cli(assets, module, argv, capsys):
    """In process (one PermissionError path, shared by all; a subprocess each would cost a minute of imports)."""
    import importlib

    from kd_core.cli import script_exit

    main = importlib.import_module(module).main
    argv = [a.format(**assets) for a in argv]
    code = script_exit(lambda: main(argv)) if module == "greek_table1" else main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "choose a path you can write" in errors[0], errors


def test_utf16_glue_tsv_reads_as_utf8(tmp_path):
    """UTF-16 with a byte-order mark (what some editors save) is unambiguous: the same examples as UTF-8."""
    from kd_core.glue.data import read_tsv
    from kd_core.glue.tasks import get_task

    write_tiny_glue(tmp_path / "utf8")
    (tmp_path / "utf16" / "RTE").mkdir(parents=True)
    text = (tmp_path / "utf8" / "RTE" / "dev.tsv").read_text()
    (tmp_path / "utf16" / "RTE" / "dev.tsv").write_text(text, encoding="utf-16")
    task = get_task("rte")
    assert read_tsv(task, tmp_path / "utf16", "dev") == read_tsv(task, tmp_path / "utf8", "dev")
