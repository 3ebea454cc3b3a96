"""Faults of `python -m kd_core.data prepare` and of opening its output: each is one clear UserError
(exit 2, one `error:` line), and a failed run leaves neither a dataset nor a `.tmp` behind."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kd_core.toy import write_text_corpus
from kd_core.data import PrepareConfig, open_corpus, prepare, verify_corpus
from kd_core.data.__main__ import main
from kd_core.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _config(tokenizer_dir: Path, inputs: list[Path], output: Path, **kw) -> PrepareConfig:
    return PrepareConfig(tokenizer=str(tokenizer_dir), inputs=[str(p) for p in inputs], output=str(output),
                         max_len=32, min_piece=8, **kw)


def _nothing_left(output: Path) -> bool:
    return not output.exists() and not output.with_name(output.name + ".tmp").exists()


def _refused(cfg: PrepareConfig, match: str) -> str:
    with pytest.raises(UserError, match=match) as e:
        prepare(cfg)
    return str(e.value)


# ---- a full disk --------------------------------------------------------------------------------
def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_is_one_error_line_and_leaves_nothing(tmp_path, tiny_tokenizer_dir):
    """The tokens (~400 kB) outgrow a 64 kB file-size limit: exit 2, one line naming the file, no dataset."""
    text = write_text_corpus(tmp_path / "docs.txt", n_docs=3000)
    out = tmp_path / "prepared"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "kd_core.data", "prepare", "--tokenizer", str(tiny_tokenizer_dir), "--input",
           str(text), "--max-len", "32", "--min-piece", "8", "--output", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          preexec_fn=_file_size_limit(64 * 1024))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left writing"), done.stderr
    assert "tokens.bin" in lines[0] and "--output" in lines[0] and "Traceback" not in done.stderr
    assert _nothing_left(out)


# ---- damage found on open -----------------------------------------------------------------------
def test_stats_record_size_and_sha256_of_each_split(tiny_corpus):
    stats = json.loads((tiny_corpus / "stats.json").read_text())
    for split, recorded in stats["splits"].items():
        data = (tiny_corpus / split / "tokens.bin").read_bytes()
        assert recorded["bytes"] == len(data) == recorded["tokens"] * 2
        assert recorded["sha256"] == hashlib.sha256(data).hexdigest()
    verify_corpus(tiny_corpus)


def test_truncated_tokens_detected_on_open(tiny_corpus, tiny_tokenizer, tmp_path):
    copy = Path(shutil.copytree(tiny_corpus, tmp_path / "copy"))
    tokens = copy / "train" / "tokens.bin"
    os.truncate(tokens, tokens.stat().st_size // 2)
    with pytest.raises(UserError, match=r"train/tokens.bin holds \d+ bytes.*prepare it again"):
        open_corpus(copy, tiny_tokenizer)
    assert len(open_corpus(copy, tiny_tokenizer, "valid")) > 0  # the intact split still opens


def test_offsets_cut_with_the_tokens_disagree_with_stats(tiny_corpus, tiny_tokenizer, tmp_path):
    """Both files cut consistently still differ from the byte size stats.json recorded."""
    copy = Path(shutil.copytree(tiny_corpus, tmp_path / "copy"))
    offsets = np.load(copy / "train" / "offsets.npy")[:5]
    np.save(copy / "train" / "offsets.npy", offsets)
    os.truncate(copy / "train" / "tokens.bin", int(offsets[-1]) * 2)
    with pytest.raises(UserError, match="tokens.bin holds .*prepare it again"):
        open_corpus(copy, tiny_tokenizer)


def test_verify_corpus_finds_a_changed_byte(tiny_corpus, tiny_tokenizer, tmp_path):
    copy = Path(shutil.copytree(tiny_corpus, tmp_path / "copy"))
    tokens = copy / "valid" / "tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[0] ^= 1
    tokens.write_bytes(bytes(data))
    open_corpus(copy, tiny_tokenizer, "valid")  # opening checks sizes only: cheap
    with pytest.raises(UserError, match="valid/tokens.bin does not match the sha256"):
        verify_corpus(copy)


# ---- where the output goes ----------------------------------------------------------------------
def test_overwrite_into_the_input_folder_is_refused(tmp_path, tiny_tokenizer_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = write_text_corpus(corpus / "docs.txt", n_docs=20)
    before = text.read_bytes()
    for output in (corpus, corpus / "prepared", tmp_path):  # the input, inside it, holding it
        cfg = _config(tiny_tokenizer_dir, [corpus], output, overwrite=True)
        _refused(cfg, f"overlaps the input {corpus}.*outside the inputs")
    _refused(_config(tiny_tokenizer_dir, [text], corpus, overwrite=True), "overlaps the input")
    assert text.read_bytes() == before and sorted(p.name for p in corpus.iterdir()) == ["docs.txt"]


def test_overwrite_replaces_only_a_prepared_dataset(tmp_path, tiny_tokenizer_dir):
    text = write_text_corpus(tmp_path / "docs.txt", n_docs=20)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.md").write_text("keep me")
    (folder / "stats.json").write_text(json.dumps({"rows": 3}))  # a stats.json, but not one of ours
    _refused(_config(tiny_tokenizer_dir, [text], folder, overwrite=True), "holds no dataset written by prepare")
    assert (folder / "notes.md").read_text() == "keep me"
    out = tmp_path / "prepared"
    prepare(_config(tiny_tokenizer_dir, [text], out))
    stats = prepare(_config(tiny_tokenizer_dir, [text], out, overwrite=True, seed=1))
    assert json.loads((out / "stats.json").read_text())["config"]["seed"] == stats["config"]["seed"] == 1


def test_output_that_is_a_file_is_refused(tmp_path, tiny_tokenizer_dir, capsys):
    text = write_text_corpus(tmp_path / "docs.txt", n_docs=20)
    target = tmp_path / "result.bin"
    target.write_bytes(b"precious")
    for overwrite in (False, True):
        _refused(_config(tiny_tokenizer_dir, [text], target, overwrite=overwrite), "is an existing file")
    argv = ["prepare", "--tokenizer", str(tiny_tokenizer_dir), "--input", str(text), "--output", str(target),
            "--overwrite"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --output {target} is an existing file")
    assert target.read_bytes() == b"precious"


# ---- inputs that give no dataset ----------------------------------------------------------------
def test_empty_input_is_refused(tmp_path, tiny_tokenizer_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "prepared"
    message = _refused(_config(tiny_tokenizer_dir, [empty], out), "no training rows")
    assert str(empty) in message and "read 0 documents" in message
    assert _nothing_left(out)


def test_input_the_cleaning_rules_drop_names_the_counts(tmp_path, tiny_tokenizer_dir):
    short = tmp_path / "short.txt"
    short.write_text("tiny\n\nsmall\n\n!!!! ???? #### **** a\n")
    out = tmp_path / "prepared"
    message = _refused(_config(tiny_tokenizer_dir, [short], out), "no training rows")
    assert "dropped 2 too short (--min-chars 15), 1 mostly symbols" in message and "kept 0" in message
    assert _nothing_left(out)


def test_binary_input_is_refused(tmp_path, tiny_tokenizer_dir):
    text = write_text_corpus(tmp_path / "docs.txt", n_docs=20)
    blob = tmp_path / "weights.txt"
    blob.write_bytes(np.arange(4096, dtype=np.int32).tobytes())
    out = tmp_path / "prepared"
    _refused(_config(tiny_tokenizer_dir, [text, blob], out), f"input {blob} is a binary file")
    assert _nothing_left(out)


def test_non_utf8_input_is_refused_naming_the_first_line(tmp_path, tiny_tokenizer_dir):
    latin = tmp_path / "latin.txt"
    head = "the king saw the whale in the sea\n\nthe old man made a small hous\u00e9 by the river\n"
    latin.write_bytes(head.encode() + "".join(f"the caf\u00e9 number {i} was good\n" for i in range(20)).encode("latin-1"))
    out = tmp_path / "prepared"
    for fmt in ("auto", "lines"):
        _refused(_config(tiny_tokenizer_dir, [latin], out, text_format=fmt),
                 rf"input {latin} is not UTF-8 text: 20 of 23 lines do not decode \(the first is line 4\)"
                 ".*convert the file to UTF-8")
        assert _nothing_left(out)


def test_a_few_stray_bytes_are_replaced_with_a_warning(tmp_path, tiny_tokenizer_dir, capsys):
    """Real corpora have them (a Gutenberg book in ../shared/data has one Latin-1 line in 10,000)."""
    from kd_core.data.sources import text_lines

    path = tmp_path / "book.txt"
    path.write_bytes("the king saw the whale\n".encode() * 200 + "the caf\u00e9\n".encode("latin-1"))
    lines = list(text_lines(path))
    assert len(lines) == 201 and lines[-1] == "the caf\ufffd\n"
    assert f"{path}: 1 of 201 lines hold bytes that are not UTF-8 (the first is line 201)" in capsys.readouterr().err


# ---- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, value, match", [
    ("valid_fraction", -0.1, r"--valid-fraction -0.1 is outside \[0, 1\)"),
    ("valid_fraction", 1.0, r"--valid-fraction 1.0 is outside \[0, 1\)"),
    ("valid_fraction", float("nan"), "--valid-fraction nan"),
    ("max_len", 2, "--max-len 2 leaves no room"),
    ("min_piece", -1, "--min-piece -1 is negative"),
    ("num_proc", 0, "--num-proc 0"),
    ("docs_per_batch", 0, "docs_per_batch=0"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, tiny_tokenizer_dir, setting, value, match):
    text = write_text_corpus(tmp_path / "docs.txt", n_docs=20)
    out = tmp_path / "prepared"
    cfg = _config(tiny_tokenizer_dir, [text], out)
    setattr(cfg, setting, value)
    _refused(cfg, match)
    assert _nothing_left(out)


@pytest.mark.parametrize("fraction", ["-0.1", "1.0"])
def test_cli_valid_fraction_out_of_range(tmp_path, tiny_tokenizer_dir, capsys, fraction):
    text = write_text_corpus(tmp_path / "docs.txt", n_docs=20)
    out = tmp_path / "prepared"
    argv = ["prepare", "--tokenizer", str(tiny_tokenizer_dir), "--input", str(text), "--output", str(out),
            "--valid-fraction", fraction]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --valid-fraction {float(fraction)} is outside [0, 1)") and "\n" not in err
    assert _nothing_left(out)
