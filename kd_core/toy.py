"""Toy assets for smoke runs and tests: a tiny WordPiece tokenizer, a generated English-like corpus, and
tiny random BERT / ELECTRA models saved with save_pretrained (so the real loading path is exercised).
Nothing here is downloaded: the `smoke` scale of every recipe and the test suite run offline in seconds."""
from __future__ import annotations

from pathlib import Path

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


def tiny_bert_teacher(directory: Path, tokenizer, layers: int = 4, hidden: int = 32, heads: int = 2, seed: int = 0,
                      dropout: float = 0.0):
    """A random BertForMaskedLM saved with its tokenizer (exercises the real loading path). Students
    copy its config: dropout=0.1 (the BERT default) gives them dropout too."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                       num_attention_heads=heads, intermediate_size=hidden * 2,
                                       max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                                       initializer_range=0.2,  # peaked output distributions, not uniform
                                       hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def tiny_electra(directory: Path, tokenizer, layers: int = 4, hidden: int = 32, embedding: int = 16, seed: int = 0,
                 dropout: float = 0.0):
    """A random ElectraForPreTraining discriminator and a small generator, saved with the tokenizer."""
    import torch
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), embedding_size=embedding, max_position_embeddings=64,
                  pad_token_id=tokenizer.pad_token_id, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                  initializer_range=0.2)
    disc = ElectraForPreTraining(ElectraConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                               intermediate_size=2 * hidden, **common))
    gen = ElectraForMaskedLM(ElectraConfig(hidden_size=hidden // 4, num_hidden_layers=2, num_attention_heads=1,
                                           intermediate_size=hidden // 2, **common))
    disc.save_pretrained(directory / "discriminator")
    gen.save_pretrained(directory / "generator")
    for d in ("discriminator", "generator"):
        tokenizer.save_pretrained(directory / d)
    return disc, gen


def write_tiny_glue(root: Path, n_rte: int = 48, n_stsb: int = 48, n_dev: int = 16) -> Path:
    """Learnable RTE- and STS-B-shaped tasks in the GLUE layout: RTE says entailment when the two
    sentences are equal, STS-B scores high when they are; the first `n_dev` rows are the dev set."""
    import numpy as np

    rng = np.random.default_rng(0)
    rte = ["index\tsentence1\tsentence2\tlabel"] + [
        f"{i}\tthe king saw the whale\t{'the king saw the whale' if i % 2 == 0 else 'a bad film'}\t"
        f"{'entailment' if i % 2 == 0 else 'not_entailment'}" for i in range(n_rte)]
    stsb = ["index\tsentence1\tsentence2\tscore"]
    for i in range(n_stsb):
        score = float(rng.uniform(0, 5))
        stsb.append(f"{i}\tthe old man\t{'the old man' if score > 2.5 else 'the sea'}\t{score:.2f}")
    for folder, rows in (("RTE", rte), ("STS-B", stsb)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "train.tsv").write_text("\n".join(rows) + "\n")
        (root / folder / "dev.tsv").write_text("\n".join(rows[:n_dev + 1]) + "\n")
    return root


def make_roberta_tokenizer(directory: Path):
    """A byte-level BPE tokenizer (RoBERTa's kind: <s> </s> <pad> <mask>, 'Ġ' marks word starts), trained on
    the toy sentences."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 4 + [" ".join(WORDS)], vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe._tokenizer.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                               cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                               model_max_length=512)
    tok.save_pretrained(directory)
    return tok


def tiny_roberta_teacher(directory: Path, tokenizer, layers: int = 4, hidden: int = 32, seed: int = 0,
                         dropout: float = 0.0):
    """A random RobertaForMaskedLM (positions offset by the padding index, one token type) with its tokenizer."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    model = RobertaForMaskedLM(RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64 + tokenizer.pad_token_id + 1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1, initializer_range=0.2, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model
