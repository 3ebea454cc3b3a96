"""Corpus pipeline: sources, cleaning rules, packing rules, storage, masking."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import needs_shared_data
from helpers import anon_rss
from kd_core.data import MaskingCollator, MaskingConfig, PrepareConfig, open_corpus, prepare
from kd_core.data.clean import CleanConfig, Cleaner, non_alnum_share, strip_html
from kd_core.data.pack import Packer, last_word_cut, pack_documents, segment_rows, word_start_table
from kd_core.data.sources import read_documents, text_files
from kd_core.data.store import TokenRows
from kd_core.errors import UserError
from kd_core.heads import IGNORE_INDEX

CLS, SEP = 101, 102


# ---- sources ----------------------------------------------------------------------------------
def test_text_formats(tmp_path):
    wiki = tmp_path / "w.raw"
    wiki.write_text(" \n = Lobster = \n \n Lobsters are blue . \n \n = = Description = = \n \n They have claws . \n"
                    " = Whale = \n \n Whales are large . \n")
    assert list(read_documents(wiki)) == [["Lobsters are blue .", "They have claws ."], ["Whales are large ."]]
    book = tmp_path / "b.txt"
    book.write_text("First paragraph\nwrapped here.\n\nSecond one.\n")
    assert list(read_documents(book)) == [["First paragraph wrapped here."], ["Second one."]]
    assert list(read_documents(book, "lines")) == [["First paragraph"], ["wrapped here."], ["Second one."]]
    (tmp_path / "README").write_text("not text")
    assert text_files([tmp_path]) == [book, wiki]
    with pytest.raises(UserError, match="does not exist"):
        text_files([tmp_path / "missing.txt"])


# ---- cleaning ---------------------------------------------------------------------------------
def test_strip_html_tags_and_entities():
    assert strip_html("<p>Fish &amp; chips</p> are <b>good</b>&nbsp;here") == "Fish & chips are good here"


def test_each_cleaning_rule_counts_what_it_removes():
    cleaner = Cleaner(CleanConfig())
    docs = [["<i>A perfectly fine sentence.</i>", "short one", "!!! ??? ... *** a lot of symbols ###"],
            ["A perfectly   FINE sentence.", "Another acceptable paragraph here."]]
    kept = [cleaner.document(d) for d in docs]
    assert kept == [["A perfectly fine sentence."], ["Another acceptable paragraph here."]]
    c = cleaner.counts
    assert (c.paragraphs_in, c.html_stripped, c.too_short, c.non_alnum, c.duplicate, c.paragraphs_kept) == \
        (5, 1, 1, 1, 1, 2)
    assert (c.documents_in, c.documents_kept) == (2, 2)


def test_cleaning_rules_switch_off():
    cleaner = Cleaner(CleanConfig(strip_html=False, min_chars=0, max_non_alnum=1.0, dedup=False))
    paragraphs = ["<b>x</b>", "hi", "!!!!", "hi"]
    assert cleaner.document(paragraphs) == paragraphs
    assert non_alnum_share("ab, cd.") == pytest.approx(2 / 6)


# ---- packing ----------------------------------------------------------------------------------
def _doc(words: list[int], start: int = 1000) -> tuple[list[int], list[bool]]:
    """A document of words with the given piece counts: ids count up, first piece of each word starts it."""
    ids, ws, t = [], [], start
    for n in words:
        for k in range(n):
            ids.append(t)
            ws.append(k == 0)
            t += 1
    return ids, ws


def test_last_word_cut_never_splits_a_word():
    _, ws = _doc([2, 3, 1])  # word starts at 0, 2, 5
    assert [last_word_cut(ws, n) for n in range(7)] == [0, 0, 2, 2, 2, 5, 6]


def test_rows_start_with_cls_separate_with_sep_and_respect_max_len():
    docs = [_doc([1] * 5, 1000), _doc([1] * 4, 2000), _doc([2] * 30, 3000)]
    rows = list(pack_documents(docs, max_len=24, cls_id=CLS, sep_id=SEP, min_piece=4))
    assert all(r[0] == CLS and r[-1] == SEP and len(r) <= 24 for r in rows)
    assert rows[0][:12] == [CLS, 1000, 1001, 1002, 1003, 1004, SEP, 2000, 2001, 2002, 2003, SEP]
    flat = [t for r in rows for t in r if t not in (CLS, SEP)]
    assert flat == docs[0][0] + docs[1][0] + docs[2][0]  # nothing lost, order kept


def test_split_happens_only_at_word_boundaries():
    ids, ws = _doc([3] * 40)
    starts = {t for t, s in zip(ids, ws) if s}
    rows = list(pack_documents([(ids, ws)], max_len=32, cls_id=CLS, sep_id=SEP, min_piece=4))
    for r in rows:
        body = r[1:-1]
        assert body[0] in starts  # every row's text begins at a word start
        assert len(body) % 3 == 0  # and holds whole 3-piece words only


def test_short_piece_moves_whole_document_to_next_row():
    packer = Packer(max_len=32, cls_id=CLS, sep_id=SEP, min_piece=10)
    first = _doc([1] * 20, 1000)
    assert list(packer.add(*first)) == []  # row now [CLS] + 20 + [SEP] = 22 tokens, room for 9 more + SEP
    second = _doc([1] * 30, 2000)
    done = list(packer.add(*second))
    assert done[0] == [CLS] + first[0] + [SEP]  # a 9-token piece < min_piece 10: nothing of doc 2 in row 1
    assert done[1] == [CLS] + second[0] + [SEP]


def test_long_enough_piece_splits_the_document():
    packer = Packer(max_len=32, cls_id=CLS, sep_id=SEP, min_piece=8)
    first = _doc([1] * 20, 1000)
    list(packer.add(*first))
    second = _doc([1] * 30, 2000)
    done = list(packer.add(*second))
    assert done[0] == [CLS] + first[0] + [SEP] + second[0][:9] + [SEP]  # a 9-token piece >= 8 stays
    rest = list(packer.flush())
    assert rest == [[CLS] + second[0][9:] + [SEP]]


def test_segments_mode_one_document_per_row():
    docs = [_doc([1] * 5, 1000), _doc([2] * 20, 2000)]
    rows = list(pack_documents(docs, max_len=16, cls_id=CLS, sep_id=SEP, mode="segments"))
    assert rows[0] == [CLS] + docs[0][0] + [SEP]
    assert all(r[0] == CLS and r[-1] == SEP and len(r) <= 16 for r in rows)
    assert [t for r in rows[1:] for t in r[1:-1]] == docs[1][0]
    assert list(segment_rows([7], [True], 16, CLS, SEP)) == [[CLS, 7, SEP]]


def test_word_start_table_wordpiece(tiny_tokenizer):
    table = word_start_table(tiny_tokenizer)
    vocab = tiny_tokenizer.get_vocab()
    assert table[vocab["king"]] and not table[vocab["##s"]] and table[vocab["[CLS]"]]


# ---- preparation and storage --------------------------------------------------------------------
def test_prepare_writes_stats_and_rows(tiny_corpus, tiny_tokenizer):
    stats = json.loads((tiny_corpus / "stats.json").read_text())
    assert stats["dtype"] == "uint16" and stats["max_len"] == 32
    assert stats["rows"] == stats["splits"]["train"]["rows"] + stats["splits"]["valid"]["rows"]
    assert stats["splits"]["valid"]["rows"] > 0
    rows = open_corpus(tiny_corpus, tiny_tokenizer)
    lengths = rows.lengths()
    assert lengths.max() <= 32 and stats["mean_row_length"] == pytest.approx(stats["tokens"] / stats["rows"])
    text = tiny_tokenizer.decode(rows[0])
    assert text.startswith("[CLS]") and "[SEP]" in text
    assert stats["cleaning"]["paragraphs_in"] == 120


def test_tokenizer_mismatch_names_both(tiny_corpus, tmp_path):
    from kd_core.toy import make_tokenizer

    other = make_tokenizer(tmp_path / "other")
    other.add_tokens(["zebra"])
    other.save_pretrained(tmp_path / "other")
    from transformers import AutoTokenizer

    with pytest.raises(UserError, match="tokenizer mismatch") as e:
        open_corpus(tiny_corpus, AutoTokenizer.from_pretrained(tmp_path / "other"))
    assert "other" in str(e.value) and "tokenizer" in str(e.value)


def test_prepare_errors_are_clear(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "t.txt").write_text("some text that is long enough to keep\n")
    cfg = PrepareConfig(tokenizer=str(tiny_tokenizer_dir), inputs=[str(tmp_path / "t.txt")],
                        output=str(tmp_path / "out"), max_len=4096)
    with pytest.raises(UserError, match="over the limit"):
        prepare(cfg)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()
    cfg.max_len, cfg.inputs = 32, [str(tmp_path / "nope.txt")]
    with pytest.raises(UserError, match="nope.txt does not exist"):
        prepare(cfg)
    assert not (tmp_path / "out").exists()


def test_cli_prepare(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "t.txt").write_text("the king saw the whale in the sea\n\nthe old man made a small house\n")
    out = tmp_path / "prepared"
    cmd = [sys.executable, "-m", "kd_core.data", "prepare", "--tokenizer", str(tiny_tokenizer_dir),
           "--input", str(tmp_path / "t.txt"), "--max-len", "16", "--output", str(out), "--valid-fraction", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "stats.json").read_text())["rows"] == 2  # doc 2 does not fit: next row
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_reading_does_not_load_the_corpus(tmp_path):
    """A 400 MB token file opens and serves rows with the heap (anonymous RSS) growing < 5% of its size."""
    directory = tmp_path / "big" / "train"
    directory.mkdir(parents=True)
    n_rows, row_len = 1_600_000, 128
    chunk = np.arange(row_len * 16_000, dtype=np.uint16).tobytes()
    with open(directory / "tokens.bin", "wb") as f:
        for _ in range(n_rows // 16_000):
            f.write(chunk)
    np.save(directory / "offsets.npy", np.arange(0, (n_rows + 1) * row_len, row_len, dtype=np.int64))
    (tmp_path / "big" / "stats.json").write_text(json.dumps({"dtype": "uint16"}))
    size = (directory / "tokens.bin").stat().st_size
    before = anon_rss()
    rows = TokenRows(directory)
    picked = [rows[i] for i in range(0, n_rows, n_rows // 1000)]
    grown = anon_rss() - before
    assert len(rows) == n_rows and all(len(r) == row_len for r in picked)
    assert int(picked[1][0]) == (n_rows // 1000 * row_len) % (row_len * 16_000) % 65536
    assert grown < size / 20, f"RSS grew {grown / 1e6:.0f} MB for a {size / 1e6:.0f} MB corpus"


# ---- masking ----------------------------------------------------------------------------------
def _collator(tok, **kw) -> MaskingCollator:
    return MaskingCollator.from_tokenizer(MaskingConfig(**kw), tok)


def _rows(tok, n=64) -> list[torch.Tensor]:
    from kd_core.toy import SENTENCES

    texts = [" ".join(SENTENCES[i % 6:] + SENTENCES[:i % 6])[: 60 + i] for i in range(n)]
    return [torch.tensor(tok(t, truncation=True, max_length=40)["input_ids"]) for t in texts]


def test_mask_rate_and_replacement_split(tiny_tokenizer):
    """Over 200 batches (~5e4 maskable tokens) the rates sit within 1 point of the targets."""
    col = _collator(tiny_tokenizer, whole_word=False)
    rows = _rows(tiny_tokenizer)
    selected = maskable = as_mask = as_random = kept = 0
    for seed in range(200):
        b = col(rows, torch.Generator().manual_seed(seed))
        orig, _ = _pad(rows, tiny_tokenizer)
        sel = b["labels"] != IGNORE_INDEX
        assert torch.equal(b["labels"][sel], orig[sel])
        maskable += int((b["attention_mask"].bool() & ~_special(orig, tiny_tokenizer)).sum())
        selected += int(sel.sum())
        as_mask += int((b["input_ids"][sel] == tiny_tokenizer.mask_token_id).sum())
        kept += int((b["input_ids"][sel] == orig[sel]).sum())
        as_random += int(((b["input_ids"][sel] != orig[sel]) & (b["input_ids"][sel] != tiny_tokenizer.mask_token_id)).sum())
    assert selected / maskable == pytest.approx(0.15, abs=0.01)
    assert as_mask / selected == pytest.approx(0.8, abs=0.01)
    # a random draw can equal the original token (1 in ~200 here), so "kept" slightly exceeds 10%
    assert kept / selected == pytest.approx(0.1, abs=0.01)
    assert as_random / selected == pytest.approx(0.1, abs=0.01)


def _pad(rows, tok):
    from kd_core.data import pad_rows

    return pad_rows(rows, tok.pad_token_id, 8)


def _special(ids, tok):
    return torch.isin(ids, torch.tensor(tok.all_special_ids))


def test_special_tokens_and_padding_never_masked(tiny_tokenizer):
    col = _collator(tiny_tokenizer, mask_prob=0.9, whole_word=False)
    rows = _rows(tiny_tokenizer)
    orig, attention = _pad(rows, tiny_tokenizer)
    for seed in range(20):
        b = col(rows, torch.Generator().manual_seed(seed))
        sel = b["labels"] != IGNORE_INDEX
        assert not (sel & _special(orig, tiny_tokenizer)).any()
        assert not (sel & ~attention.bool()).any()
        assert torch.equal(b["input_ids"][~sel], orig[~sel])
    assert b["input_ids"].shape[1] % 8 == 0


def test_whole_word_masking_masks_words_entirely(tiny_tokenizer):
    col = _collator(tiny_tokenizer, mask_prob=0.3, whole_word=True)
    rows = [torch.tensor(tiny_tokenizer("kings sailed happily numbers " * 4)["input_ids"]) for _ in range(16)]
    orig, _ = _pad(rows, tiny_tokenizer)
    starts = torch.from_numpy(word_start_table(tiny_tokenizer))[orig]
    saw_multi_piece = False
    for seed in range(50):
        sel = col(rows, torch.Generator().manual_seed(seed))["labels"] != IGNORE_INDEX
        for i in range(orig.shape[0]):
            for j in range(1, orig.shape[1]):
                if not starts[i, j]:  # a continuation piece shares its word's decision
                    assert sel[i, j] == sel[i, j - 1], (seed, i, j)
                    saw_multi_piece |= bool(sel[i, j])
    assert saw_multi_piece


def test_smoothed_masking_prefers_rare_tokens(tiny_tokenizer):
    vocab = len(word_start_table(tiny_tokenizer))
    counts = np.full(vocab, 10)
    the = tiny_tokenizer.convert_tokens_to_ids("the")
    counts[the] = 100_000
    col = MaskingCollator.from_tokenizer(MaskingConfig(smoothing=0.7, whole_word=False), tiny_tokenizer, counts)
    rows = _rows(tiny_tokenizer)
    orig, _ = _pad(rows, tiny_tokenizer)
    b = col(rows, torch.Generator().manual_seed(0))
    sel = b["labels"] != IGNORE_INDEX
    share_the_masked = (orig[sel] == the).float().mean()
    share_the_overall = (orig[orig > 4] == the).float().mean()
    assert share_the_overall > 0.1 and share_the_masked < share_the_overall / 3
    n_maskable = int((b["attention_mask"].bool() & ~_special(orig, tiny_tokenizer)).sum())
    assert int(sel.sum()) == round(0.15 * n_maskable)


def test_masking_is_deterministic_per_seed(tiny_tokenizer):
    col = _collator(tiny_tokenizer)
    rows = _rows(tiny_tokenizer, 8)
    a = col(rows, torch.Generator().manual_seed(5))
    b = col(rows, torch.Generator().manual_seed(5))
    c = col(rows, torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])


def test_bad_masking_config(tiny_tokenizer):
    with pytest.raises(UserError, match="must sum to 1"):
        _collator(tiny_tokenizer, replace=(0.8, 0.1, 0.2))
    with pytest.raises(ValueError, match="needs token counts"):
        _collator(tiny_tokenizer, smoothing=0.7)


# ---- real corpus ------------------------------------------------------------------------------
def test_prepare_real_corpus_sample(tmp_path):
    corpus = needs_shared_data("corpus", "wikitext-2-raw", "wiki.valid.raw")
    from kd_core.assets import minilm_dir

    try:
        tok_dir = minilm_dir()
    except UserError as e:
        pytest.skip(str(e))
    stats = prepare(PrepareConfig(tokenizer=str(tok_dir), inputs=[str(corpus)], output=str(tmp_path / "wiki"),
                                  max_len=128))
    assert stats["tokens"] > 200_000 and stats["mean_row_length"] > 120
    assert stats["cleaning"]["documents_in"] > 50


def test_hf_dataset_input_and_parallel_tokenization_agree(tmp_path, tiny_tokenizer_dir):
    """A save_to_disk dataset and the same text as a file give the same rows; num_proc=2 changes nothing."""
    import datasets

    from kd_core.toy import SENTENCES

    texts = [" ".join(SENTENCES[i % 6:] + SENTENCES[:i % 6]) + f" number {i}" for i in range(40)]
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    common = dict(tokenizer=str(tiny_tokenizer_dir), max_len=32, valid_fraction=0.0, min_piece=8)
    prepare(PrepareConfig(hf_dataset=str(tmp_path / "ds"), text_column="body", output=str(tmp_path / "a"), **common))
    prepare(PrepareConfig(inputs=[str(tmp_path / "t.txt")], text_format="lines", output=str(tmp_path / "b"),
                          num_proc=2, docs_per_batch=7, **common))
    a, b = TokenRows(tmp_path / "a" / "train"), TokenRows(tmp_path / "b" / "train")
    assert len(a) == len(b) > 10
    assert all(torch.equal(a[i], b[i]) for i in range(len(a)))
    with pytest.raises(UserError, match="no column 'text'"):
        prepare(PrepareConfig(hf_dataset=str(tmp_path / "ds"), output=str(tmp_path / "c"), **common))
