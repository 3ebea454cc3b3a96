"""Shared fixtures: a tiny WordPiece tokenizer, a tiny prepared corpus, tiny random models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))  # recipes are scripts, imported by name

from kd_core.toy import make_tokenizer, write_text_corpus  # noqa: E402

@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from kd_core.data import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("corpus")
    text = write_text_corpus(root / "docs.txt")
    out = root / "prepared"
    prepare(PrepareConfig(tokenizer=str(tiny_tokenizer_dir), inputs=[str(text)], output=str(out), max_len=32,
                          valid_fraction=0.1, min_piece=8))
    return out


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps process-wide state; each test builds its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield


def needs_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (real data lives in ../shared/data on developer and CI machines)")
    return path
