"""Post-training int8 quantization of the Linear layers for CPU inference: PyTorch's dynamic quantization
(weights stored int8 per tensor, activations quantized on the fly per batch, int8 GEMMs of the x86/fbgemm
engine). Embeddings and LayerNorms stay fp32.

Backend: torch.ao.quantization.quantize_dynamic, which ships with torch (no new dependency) and runs in eager
mode. torch marks torch.ao.quantization deprecated in favour of torchao (`quantize_` with an int8 dynamic
config), whose CPU speed needs torch.compile; the call is kept in one function, `quantize`, to swap it.

Saved format (a directory): config.json (with the pruned shapes, if any), the tokenizer, `model_int8.pt`
(the quantized model's state dict, torch.save; it loads with torch.load(weights_only=True)) and
`quantization.json` (backend, engine, versions). `load_quantized` rebuilds the fp32 structure from the
config, quantizes it the same way and loads the int8 weights strictly. from_pretrained cannot load it.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

from ..errors import UserError
from .common import check_output, load_model, model_class_of, n_params, size_on_disk, staged
from .structure import from_config, shape_like_config

WEIGHTS = "model_int8.pt"
BACKEND = "torch.ao.quantization.quantize_dynamic (int8 weights, dynamic int8 activations, Linear layers)"


@dataclass
class QuantizeConfig:
    model: str = ""
    output: str = ""
    task: str = ""  # a GLUE task: compare fp32 and int8 dev scores
    glue_dir: str | None = None
    max_len: int = 128
    overwrite: bool = False


def quantize(model: nn.Module) -> nn.Module:
    """An int8 copy of `model` (eval mode) for CPU inference; `model` is left as it is."""
    if torch.backends.quantized.engine == "none":
        raise UserError("this torch build has no quantized CPU engine (x86/fbgemm/qnnpack)")
    with warnings.catch_warnings():  # torch.ao's deprecation notice, once per call: the module docstring says why
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


def save_quantized(model: nn.Module, tokenizer, directory: Path, report: dict | None = None) -> dict:
    """Write the format the module docstring describes; returns quantization.json's content."""
    model.config.architectures = [type(model).__name__]  # save_pretrained records it; config.save_pretrained does not
    model.config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    torch.save(model.state_dict(), directory / WEIGHTS)
    info = {"backend": BACKEND, "engine": torch.backends.quantized.engine, "torch": torch.__version__,
            "weights": WEIGHTS, "bytes": size_on_disk(directory), **(report or {})}
    (directory / "quantization.json").write_text(json.dumps(info, indent=1))
    return info


def load_quantized(path: str | Path) -> nn.Module:
    """The int8 model `save_quantized` wrote, in eval mode."""
    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise UserError(f"{path} holds no {WEIGHTS}: give a directory `python -m kd_core.compress quantize` wrote")
    config = AutoConfig.from_pretrained(path)
    model = from_config(model_class_of(config), config).float()
    shape_like_config(model)
    quantized = quantize(model)
    quantized.load_state_dict(torch.load(path / WEIGHTS, weights_only=True), strict=True)
    return quantized.eval()


def dev_scores(model: nn.Module, tokenizer, task_name: str, glue_dir: str | None, max_len: int) -> dict:
    """Every dev metric of the task (kd_core.glue's evaluation), on CPU."""
    from ..glue.finetune import FinetuneConfig, evaluate, task_rows
    from ..glue.tasks import get_task

    task, cfg = get_task(task_name), FinetuneConfig(max_len=max_len)
    _, dev = task_rows(task, glue_dir, cfg, tokenizer, {})
    return evaluate(model, tokenizer, task, dev, cfg, torch.device("cpu"))


def run_quantize(cfg: QuantizeConfig) -> dict:
    """Quantize `cfg.model` into `cfg.output`; with a task, the fp32 and int8 dev scores side by side."""
    if cfg.task:  # a random head's dev score would read as the model's
        from ..glue.distill import check_fine_tuned
        from ..glue.tasks import get_task

        check_fine_tuned(cfg.model, get_task(cfg.task), role="--model")
    out = check_output(cfg.output, cfg.overwrite, cfg.model)
    model, tokenizer = load_model(cfg.model)
    quantized = quantize(model)
    report: dict = {"config": asdict(cfg), "fp32_bytes": size_on_disk(cfg.model), "fp32_params": n_params(model)}
    if cfg.task:
        report["dev"] = {name: dev_scores(m, tokenizer, cfg.task, cfg.glue_dir, cfg.max_len)["metrics"]
                         for name, m in (("fp32", model), ("int8", quantized))}
    with staged(out) as tmp:
        return save_quantized(quantized, tokenizer, tmp, report)
