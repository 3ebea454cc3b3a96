"""Every training CLI, fed what a careless user feeds it: one `error:` line naming the problem and
the fix, exit status 2, no traceback, and nothing of an earlier run lost.

The cases run as real subprocesses (`python -m ...`), two at a time, once per module."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import tiny_pretrain_config, write_config
from kd_core.toy import tiny_bert_teacher, tiny_electra
from kd_core import pretrain

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ["-m", "kd_core.pretrain"]
BERT = ["-m", "bert_kd", "distill"]
ELECTRA = ["-m", "electra_kd", "distill"]

# (case, command, arguments with {placeholders}, a fragment the error line must hold)
CASES = [
    ("config file missing", PRETRAIN, ["--config", "{tmp}/nope.yaml", "--output-dir", "{tmp}/o1"], "config file not found"),
    ("config not YAML", PRETRAIN, ["--config", "{bad_yaml}", "--output-dir", "{tmp}/o2"], "is not valid YAML"),
    ("unknown key", PRETRAIN, ["--config", "{pretrain}", "--set", "train.lrr=1", "--output-dir", "{tmp}/o3"],
     "unknown config key 'train.lrr'"),
    ("log_every 0", PRETRAIN, ["--config", "{pretrain}", "--set", "train.log_every=0", "--output-dir", "{tmp}/o4"],
     "train.log_every=0: give 1 or more"),
    ("batch_size 0", PRETRAIN, ["--config", "{pretrain}", "--set", "train.batch_size=0", "--output-dir", "{tmp}/o5"],
     "train.batch_size=0"),
    ("negative weight", PRETRAIN, ["--config", "{pretrain}", "--set", "loss_weights={{mlm: -1}}", "--output-dir",
                                   "{tmp}/o6"], "weights must be numbers >= 0"),
    ("corpus missing", PRETRAIN, ["--config", "{pretrain}", "--set", "data.corpus={tmp}/nowhere", "--output-dir",
                                  "{tmp}/o7"], "nowhere is not a prepared dataset"),
    ("no corpus", PRETRAIN, ["--config", "{pretrain}", "--set", "data.corpus=", "--output-dir", "{tmp}/o8"],
     "no corpus: set data.corpus"),
    ("used output dir", PRETRAIN, ["--config", "{pretrain}", "--output-dir", "{used}"], "already holds a run"),
    ("resume and overwrite", PRETRAIN, ["--config", "{pretrain}", "--output-dir", "{used}", "--resume", "--overwrite"],
     "contradict"),
    ("changed config on resume", PRETRAIN, ["--config", "{pretrain}", "--output-dir", "{used}", "--resume", "--set",
                                            "train.weight_decay=0.5"], "config differs from the checkpoint's"),
    ("output dir is a file", PRETRAIN, ["--config", "{pretrain}", "--output-dir", "{a_file}"], "is a file"),
    ("fp16 on cpu", PRETRAIN, ["--config", "{pretrain}", "--set", "train.mixed_precision=fp16", "--output-dir",
                               "{tmp}/o9"], "fp16 needs a GPU"),
    ("mixed precision typo", PRETRAIN, ["--config", "{pretrain}", "--set", "train.mixed_precision=fp8", "--output-dir",
                                        "{tmp}/o10"], "is not one of"),
    ("no teacher", BERT, ["--config", "{bert}", "--set", "teacher=", "--output-dir", "{tmp}/b1"], "no teacher"),
    ("teacher missing", BERT, ["--config", "{bert}", "--set", "teacher={tmp}/none", "--output-dir", "{tmp}/b2"],
     "/none' (the teacher's or model's): no such directory"),
    ("student deeper than teacher", BERT, ["--config", "{bert}", "--set", "student.num_layers=6", "--output-dir",
                                           "{tmp}/b3"], "deeper than its 4-layer teacher"),
    ("student wider than teacher", BERT, ["--config", "{bert}", "--set", "student.hidden_size=64", "--output-dir",
                                          "{tmp}/b4"], "do not fit the source's"),
    ("unknown loss term", BERT, ["--config", "{bert}", "--set", "loss_weights={{cosine: 1}}", "--output-dir", "{tmp}/b5"],
     "unknown loss term"),
    ("vocab mismatch", BERT, ["--config", "{bert}", "--set", "teacher={small_vocab}", "--output-dir", "{tmp}/b6"],
     "vocab mismatch"),
    ("sequence over the model's limit", BERT, ["--config", "{bert}", "--set", "teacher={short_positions}",
                                               "--output-dir", "{tmp}/b7"], "over the model's limit of 16 positions"),
    ("temperature 0", BERT, ["--config", "{bert}", "--set", "loss.temperature=0", "--output-dir", "{tmp}/b8"],
     "loss.temperature=0.0: give a value > 0"),
    ("extract from a missing teacher", ["-m", "bert_kd", "extract"], ["--teacher", "{tmp}/none", "--layers", "0,1",
                                                                      "--output", "{tmp}/b9"], "cannot load"),
    ("electra teacher is not electra", ELECTRA, ["--config", "{electra}", "--set", "teacher={bert_teacher}",
                                                 "--output-dir", "{tmp}/e1"], "it is a 'bert' checkpoint"),
    ("new generator left untrained", ELECTRA, ["--config", "{electra}", "--set", "generator.path=null",
                                               "--output-dir", "{tmp}/e2"], "a new generator must be trained"),
    ("generator width", ELECTRA, ["--config", "{electra}", "--set", "generator.width_fraction=2", "--output-dir",
                                  "{tmp}/e3"], "generator.width_fraction=2.0"),
    ("ablation grid missing", ["-m", "electra_kd", "ablate"], ["--grid", "{tmp}/nope.yaml", "--output-dir", "{tmp}/e4"],
     "config file not found"),
]


@pytest.fixture(scope="module")
def cli_runs(tiny_corpus, tiny_tokenizer, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    from transformers import BertConfig, BertForMaskedLM

    tmp = tmp_path_factory.mktemp("bad_inputs")
    bert_teacher = tmp / "bert_teacher"
    tiny_bert_teacher(bert_teacher, tiny_tokenizer)
    tiny_electra(tmp / "electra", tiny_tokenizer)
    for name, vocab, positions in (("small_vocab", 50, 64), ("short_positions", len(tiny_tokenizer), 16)):
        BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=positions)).save_pretrained(tmp / name)
        tiny_tokenizer.save_pretrained(tmp / name)
    base = tiny_pretrain_config(tiny_corpus, max_steps=2)
    used = tmp / "used"
    pretrain.run(base, str(used))
    common = f"data.corpus: {tiny_corpus}\ntrain: {{max_steps: 2, batch_size: 8, micro_batch_size: 8}}\n"
    (tmp / "bert.yaml").write_text(f"teacher: {bert_teacher}\nstudent: {{num_layers: 2}}\n" + common.replace(
        "data.corpus:", "data:\n  corpus:"))
    (tmp / "electra.yaml").write_text(
        f"teacher: {tmp / 'electra' / 'discriminator'}\ngenerator: {{path: {tmp / 'electra' / 'generator'}}}\n"
        f"student: {{num_layers: 2}}\n" + common.replace("data.corpus:", "data:\n  corpus:"))
    (tmp / "bad.yaml").write_text("train: {lr: [1, 2\n")
    (tmp / "a_file").write_text("not a directory")
    values = {"tmp": tmp, "pretrain": write_config(base, tmp / "pretrain.yaml"), "bert": tmp / "bert.yaml",
              "electra": tmp / "electra.yaml", "bad_yaml": tmp / "bad.yaml", "used": used, "a_file": tmp / "a_file",
              "small_vocab": tmp / "small_vocab", "short_positions": tmp / "short_positions",
              "bert_teacher": bert_teacher}
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")

    def run(case):
        _, command, args, _ = case
        argv = [a.format(**values) for a in args]
        return subprocess.run([sys.executable, *command, *argv], env=env, cwd=ROOT, capture_output=True, text=True)

    before = (used / "metrics.jsonl").read_text()
    with ThreadPoolExecutor(2) as pool:
        runs = dict(zip((c[0] for c in CASES), pool.map(run, CASES)))
    runs["_used_metrics_unchanged"] = (used / "metrics.jsonl").read_text() == before
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("case,command,args,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(cli_runs, case, command, args, fragment):
    proc = cli_runs[case]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert fragment in errors[0], errors[0]


@pytest.mark.slow
def test_refused_runs_leave_the_run_in_the_dir_untouched(cli_runs):
    assert cli_runs["_used_metrics_unchanged"]
