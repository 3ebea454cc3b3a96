"""The skeleton every training command shares: own the output dir, open the corpus, train, save.

A command (pretrain, bert_kd distill, electra_kd distill) builds its objective and hands it to
`launch`, which does the rest in one place: an exclusive lock on the output dir for the life of the
run, refusing a dir that holds another run, the seed, the tokenizer and vocab/length checks, the
masking collator, the engine, and the models saved beside `final/`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn
from transformers import AutoTokenizer

from .checkpoint import seed_everything
from .config import ConfigError, flatten, to_dict
from .families import family_of
from .distributed import agree, on_main, process_state
from .files import atomic_write_text
from .data import MaskingCollator, MaskingConfig, open_corpus, read_stats
from .data.store import STATS_FILE
from .engine import Engine, TrainConfig
from .errors import UserError, one_line
from .objective import Objective
from .sampler import check_batch_split

LOCK_FILE = ".lock"
# what a run writes into its output dir: present means the dir holds a run, and --overwrite removes these
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "tb", "final", "student_init.json", "generator")
RUN_PREFIXES = ("checkpoint-", "final.", "config.yaml.", "metrics.jsonl.")
# config keys naming a run's inputs: --resume compares what they hold, not their paths (a teacher may move)
INPUT_KEYS = ("teacher", "generator.path", "model.init", "student.init_checkpoint", "data.corpus", "data.tokenizer")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass
class DataConfig:
    corpus: str = ""  # a directory prepared by `python -m kd_core.data prepare`
    tokenizer: str | None = None  # default: the teacher's (or the model's), else the corpus's own


def check_compatible(model: nn.Module, tokenizer, max_len: int) -> None:
    """Vocab and length checks that otherwise surface as CUDA index errors deep in a run."""
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"vocab mismatch: tokenizer '{tokenizer.name_or_path}' has {len(tokenizer)} tokens but "
                        f"the model's embedding has {model.config.vocab_size}; use the model's own tokenizer")
    limit = family_of(model).max_length(model.config)
    if max_len > limit:
        raise UserError(f"sequence length {max_len} is over the model's limit of {limit} positions; "
                        "prepare the corpus with a smaller --max-len")


def run_entries(output_dir: Path) -> list[str]:
    """Names in `output_dir` that a run wrote (empty: the dir holds no run)."""
    if not output_dir.is_dir():
        return []
    return sorted(p.name for p in output_dir.iterdir()
                  if p.name in RUN_ENTRIES or p.name.startswith(RUN_PREFIXES))


def content_hash(path: str) -> str:
    """What an input holds: a prepared corpus by its splits' sha256 and vocabulary, a model folder by its
    config.json and weight files, any other folder by its files; a hub name by its name."""
    root = Path(path)
    if (root / STATS_FILE).is_file():
        stats = read_stats(root)
        return "corpus:" + json.dumps([stats["vocab_hash"], stats["max_len"], stats["splits"]], sort_keys=True)
    if not root.is_dir():
        return f"name:{path}"
    files = sorted(p for p in root.iterdir() if p.is_file() and (
        not (root / "config.json").is_file() or p.name == "config.json" or p.suffix in WEIGHT_SUFFIXES))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return "files:" + digest.hexdigest()


def input_paths(run_config: Any) -> dict[str, str]:
    flat = flatten(to_dict(run_config))
    return {key: flat[key] for key in INPUT_KEYS if flat.get(key)}


def input_hashes(run_config: Any) -> dict[str, str]:
    return {key: content_hash(path) for key, path in input_paths(run_config).items()}


def check_not_an_input(output_dir: Path, run_config: Any) -> None:
    """A run writes into its dir, and --overwrite (a final/ save too) replaces what a run wrote there: neither may
    land in a teacher, corpus or other input, nor remove one kept inside a run's entries (a teacher in <dir>/final)."""
    out = output_dir.resolve()
    for key, path in input_paths(run_config).items():
        source = Path(path).resolve()
        if not Path(path).exists():
            continue
        inside_entry = source.is_relative_to(out) and source != out and (
            source.relative_to(out).parts[0] in RUN_ENTRIES or source.relative_to(out).parts[0].startswith(RUN_PREFIXES))
        if out == source or out.is_relative_to(source) or inside_entry:
            raise UserError(f"--output-dir {output_dir} overlaps {key}={path}: the run would write into it or "
                            "replace it; give an --output-dir outside the run's inputs")


def _holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text().strip() or "unknown process"
    except OSError:
        return "unknown process"


def _lock(out: Path, resume: bool, overwrite: bool):
    """The main process's exclusive flock on `out` (the open file holds it), after refusing a dir that holds another
    run; --overwrite removes that run's files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+")
    except OSError as e:
        raise UserError(f"cannot create --output-dir {out}: {one_line(e)}; choose a path you can write (check its "
                        "permissions and free space) and run the command again") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{out} is in use by another run ({_holder(out / LOCK_FILE)}); wait for it to end "
                            "or use another --output-dir") from None
        except OSError as e:  # e.g. ENOLCK: NFS without a lock daemon, or a filesystem without flock
            raise UserError(f"cannot lock {out / LOCK_FILE} ({one_line(e)}): the filesystem does not support flock; "
                            "use an --output-dir on one that does (local disk, Lustre/GPFS, NFS with locking)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(sys.argv)}\n")
        handle.flush()
        os.fsync(handle.fileno())
        found = run_entries(out)
        if found and not resume:
            if not overwrite:
                raise UserError(f"{out} already holds a run ({', '.join(found[:4])}); use --resume to continue it, "
                                "a new --output-dir, or --overwrite to replace it")
            for name in found:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    except BaseException:
        handle.close()
        raise
    return handle


@contextmanager
def claim_output_dir(output_dir: str | Path, resume: bool, overwrite: bool) -> Iterator[Path]:
    """Hold an exclusive lock on `output_dir` while the block runs (main process), and check that every
    process sees the same directory.

    The lock is a flock, which the kernel drops when its process dies: a killed run never blocks
    `--resume`. A dir that holds another run is refused unless resumed or overwritten. Every process then
    reads the lock file the main process just wrote: a process that does not see it (a node-local dir on a
    multi-node run) stops the run before anything is resumed or written."""
    out = Path(output_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: resume the run, or overwrite it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file; give a directory")
    handles = []
    try:
        on_main(lambda: handles.append(_lock(out, resume, overwrite)))
        try:
            seen = (out / LOCK_FILE).read_text()
        except OSError as e:
            seen = f"cannot read {LOCK_FILE}: {one_line(e)}"
        agree(seen, f"--output-dir {out} is not the same directory on every process: it must be on a filesystem "
                    f"shared by all nodes (what each process reads in its {LOCK_FILE})")
        yield out
    finally:
        for handle in handles:
            handle.close()  # closing releases the flock


@dataclass
class Job:
    """What a command builds for `launch`: the objective and everything specific to it."""
    objective: Objective  # holds the resolved loss weights
    init_report: dict[str, Any] = field(default_factory=dict)  # how the student was initialised
    save_beside: dict[str, nn.Module] = field(default_factory=dict)  # saved as <output>/<name> after training


def open_tokenizer(data: DataConfig, default_source: str | None):
    source = data.tokenizer or default_source or read_stats(data.corpus)["tokenizer"]
    whose = "data.tokenizer" if data.tokenizer else "the teacher's or model's" if default_source else "the corpus's"
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        found = "no such directory" if not Path(source).exists() else one_line(e)
        raise UserError(f"cannot load the tokenizer from '{source}' ({whose}): {found}; give a directory saved with "
                        "save_pretrained (or a hub name when online), or set data.tokenizer") from e


def launch(run_config: Any, build: Callable[[Any], Job], output_dir: str | Path, resume: bool = False,
           overwrite: bool = False, tokenizer_source: str | None = None) -> dict[str, float]:
    """Train what `build(tokenizer)` returns on `run_config.data`/`.masking`/`.train`: the whole run of a
    command. The tokenizer is data.tokenizer, else `tokenizer_source` (the teacher), else the corpus's."""
    data: DataConfig = run_config.data
    masking: MaskingConfig = run_config.masking
    train: TrainConfig = run_config.train
    if not data.corpus:
        raise ConfigError("no corpus: set data.corpus to a directory prepared by `python -m kd_core.data prepare`")
    state = process_state()
    check_batch_split(train.batch_size, train.micro_batch_size, state.num_processes)  # before the dir is touched
    check_not_an_input(Path(output_dir), run_config)
    with claim_output_dir(output_dir, resume, overwrite) as out:
        stats = read_stats(data.corpus)
        tokenizer = open_tokenizer(data, tokenizer_source)
        seed_everything(train.seed)  # random initialisation of students, projections and new generators
        job = build(tokenizer)
        for model in (job.objective.student, job.objective.teacher):
            if model is not None:
                check_compatible(model, tokenizer, stats["max_len"])
        train_rows = open_corpus(data.corpus, tokenizer, "train")
        valid_rows = open_corpus(data.corpus, tokenizer, "valid")
        if job.init_report and state.is_main_process:
            atomic_write_text(out / "student_init.json", json.dumps(job.init_report, indent=1))
        collate = MaskingCollator.for_corpus(masking, tokenizer, data.corpus)
        if not len(valid_rows) and state.is_main_process:
            print(f"note: the corpus {data.corpus} has no held-out rows (prepared with --valid-fraction 0, or too "
                  "small for its share): no eval/loss will be logged")
        engine = Engine(train, job.objective, train_rows, collate, out, run_config, tokenizer=tokenizer,
                        eval_rows=valid_rows if len(valid_rows) else None, resume=resume,
                        inputs=input_hashes(run_config))
        summary = engine.fit()
        for name, model in job.save_beside.items():
            engine.save_pretrained(model, out / name)
        return summary
