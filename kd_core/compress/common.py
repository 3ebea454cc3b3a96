"""What the prune and quantize commands share: loading the model to compress, and an output directory that
appears complete or not at all."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import transformers
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from ..errors import UserError, one_line
from ..families import family_of
from ..files import atomic_dir, check_model_output, commit_dir
from ..student import load_complete
from .structure import is_stock_loadable, load_pruned


def model_class_of(config):
    """The class the checkpoint was saved from (config.json `architectures`), e.g. BertForSequenceClassification."""
    names = getattr(config, "architectures", None) or []
    if not names or not hasattr(transformers, names[0]):
        raise UserError(f"config.json names no transformers model class (architectures: {names}); save the model "
                        "with save_pretrained")
    return getattr(transformers, names[0])


def load_model(path: str) -> tuple[nn.Module, object]:
    """(model in fp32 and eval mode, tokenizer) from a directory: stock checkpoints through from_pretrained
    (every weight required), pruned ones through load_pruned."""
    if not Path(path).is_dir():
        raise UserError(f"--model {path}: no such directory; give a model saved with save_pretrained")
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the model in {path} ({one_line(e)}): give a directory saved with "
                        "save_pretrained, with its tokenizer") from e
    family_of(config)  # an unknown family fails here, in one line
    model_class = model_class_of(config)
    model = (load_complete(model_class, path, "model to compress") if is_stock_loadable(config)
             else load_pruned(path, model_class))
    return model.eval(), tokenizer


REPORTS = ("pruning.json", "quantization.json")  # what marks a directory these commands wrote


def check_output(output: str, overwrite: bool, model: str) -> Path:
    """The output directory: new, or (--overwrite) one that prune/quantize wrote before; never the input model,
    a folder holding it, or any other existing folder (--overwrite deletes what it replaces)."""
    return check_model_output(output, {"--model": model}, overwrite, REPORTS)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary directory beside `out`, renamed to `out` when the block completes and removed when it fails:
    a failed or interrupted command leaves no half-written model behind."""
    tmp = atomic_dir(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, out)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_on_disk(path: str | Path) -> int:
    """Bytes of the weight files in a model directory (config and tokenizer files not counted)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.suffix in (".safetensors", ".pt", ".bin"))
