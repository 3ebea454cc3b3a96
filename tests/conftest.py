"""Shared fixtures: a tiny WordPiece tokenizer, a tiny prepared corpus, tiny random models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

WORDS = """the a an and or but of to in on at for with by from as is was are were be been it this that
these those he she they we you i his her their our my your not no yes all some many more most other
such only also very can will would could should may might must do did does have has had go went
come came see saw make made take took know knew think thought say said tell told day night year
time man woman child people house city country world water fire earth king queen ship sea whale
lobster river mountain book story word song music film movie good bad great small large old new
first last long short high low right left""".split()
PIECES = ["##s", "##ed", "##ing", "##er", "##ly", "##est", "##ness", "##ful"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]

SENTENCES = [
    "the king saw the whale in the sea and the ship went on",
    "a good movie is a great story with music and a long song",
    "the old man and the child made a small house by the river",
    "they thought the new book was very good but the film was bad",
    "in the night the people of the city saw the fire on the mountain",
    "she said the queen would come to the country at the first day of the year",
]


def make_tokenizer(directory: Path):
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + WORDS + PIECES + [c for c in CHARS if c not in WORDS]
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))}, do_lower_case=True,
                            model_max_length=512)
    tok.save_pretrained(directory)
    return tok


def write_text_corpus(path: Path, n_docs: int = 120) -> Path:
    """Documents separated by blank lines, each a few of the sentences, every one distinct."""
    docs = []
    for i in range(n_docs):
        words = []
        for j in range(2 + i % 4):
            words.append(SENTENCES[(i + j) % len(SENTENCES)])
        docs.append(" . ".join(words) + f" . story number {' '.join(str(i))} .")
    path.write_text("\n\n".join(docs) + "\n")
    return path


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
