"""Student construction from a teacher: shape, architecture, and initialisation by a layer map.

Shared by bert_kd (BERT-family *ForMaskedLM teachers) and electra_kd (ELECTRA discriminators).
A student is the teacher's own architecture with fewer (and optionally narrower) layers, or, for
BERT teachers, a DistilBERT (no token-type embeddings, no pooler). Initialisation copies teacher
layers by the layer map, or another checkpoint's layers, or nothing (random). Every tensor whose
shape matches is copied (embeddings and MLM head included); what could not be copied is reported.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

from .families import LAYER_NAME, family_of
from .families.distilbert import bert_to_distilbert
from .layer_map import LayerMap, resolve_layer_map
from .config import out_of_range
from .files import atomic_dir, commit_dir
from .errors import UserError, one_line



@dataclass
class StudentConfig:
    arch: Literal["same", "distilbert"] = "same"  # the teacher's architecture, or DistilBERT (BERT teachers)
    num_layers: int = 6
    hidden_size: int | None = None  # None: the teacher's (narrower needs hid/emb projections, TinyBERT)
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    init: Literal["teacher", "checkpoint", "random"] = "teacher"
    layers: str | list[int] = "every_other"  # teacher layers to copy and imitate: a preset or a 0-based list
    init_checkpoint: str | None = None  # for init=checkpoint: a model whose layers `init_layers` are copied
    init_layers: list[int] = field(default_factory=list)

    def problems(self) -> list[str]:
        sizes = {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                 "num_attention_heads": self.num_attention_heads}
        return out_of_range([(not self.num_layers >= 1, f"num_layers={self.num_layers}: give 1 or more")] +
                            [(v is not None and not v >= 1, f"{k}={v}: give 1 or more (or leave it empty)")
                             for k, v in sizes.items()])




def student_config(teacher_config, cfg: StudentConfig):
    """The student's HF config: the teacher's with fewer/narrower layers, or a DistilBERT config."""
    hidden = cfg.hidden_size or teacher_config.hidden_size
    heads = cfg.num_attention_heads or teacher_config.num_attention_heads
    inter = cfg.intermediate_size or (teacher_config.intermediate_size * hidden // teacher_config.hidden_size)
    if hidden % heads:
        raise UserError(f"student hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    if cfg.arch == "distilbert":
        if teacher_config.model_type not in ("bert", "distilbert"):
            raise UserError(f"student.arch=distilbert needs a BERT teacher, not '{teacher_config.model_type}'")
        return DistilBertConfig(
            vocab_size=teacher_config.vocab_size, max_position_embeddings=teacher_config.max_position_embeddings,
            n_layers=cfg.num_layers, n_heads=heads, dim=hidden, hidden_dim=inter,
            activation=getattr(teacher_config, "hidden_act", "gelu"), pad_token_id=teacher_config.pad_token_id,
            dropout=getattr(teacher_config, "hidden_dropout_prob", 0.1),
            attention_dropout=getattr(teacher_config, "attention_probs_dropout_prob", 0.1))
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = cfg.num_layers
    config.hidden_size, config.num_attention_heads, config.intermediate_size = hidden, heads, inter
    if config.model_type == "electra" and getattr(config, "embedding_size", hidden) == teacher_config.hidden_size:
        config.embedding_size = hidden  # ELECTRA-base/large tie embedding size to the hidden size
    return config


def copy_layers(source: dict[str, torch.Tensor], student: nn.Module, layers: list[int] | tuple[int, ...]
                ) -> tuple[list[str], list[str]]:
    """Copy source tensors into the student: student layer i <- source layer layers[i]; other tensors
    (embeddings, heads) by name. Only tensors of equal shape are copied. Returns (copied, not_copied)."""
    target = student.state_dict()
    picked, skipped = {}, []
    for key, tensor in target.items():
        m = LAYER_NAME.match(key)
        source_key = f"{m.group(1)}.{layers[int(m.group(2))]}.{m.group(3)}" if m else key
        if source_key in source and source[source_key].shape == tensor.shape:
            picked[key] = source[source_key]
        else:
            skipped.append(key)
    if not picked:
        raise UserError("nothing could be copied into the student: the source's parameter names or shapes all "
                        "differ from the student's (another architecture, or a narrower student whose embeddings "
                        "differ too); use student.init=random, or a source of the student's architecture")
    unfit = [k for k in skipped if LAYER_NAME.match(k) and target[k].is_floating_point()]
    embeddings_fit = any("word_embeddings" in k for k in picked)
    if unfit and embeddings_fit:  # e.g. ELECTRA's narrow embedding_size equals a narrow student's width
        print(f"warning: only the embeddings and head fit the student; its {len(unfit)} layer tensors start random")
    elif unfit:  # a student "initialised from the teacher" that kept random layers would be a silent lie
        key = unfit[0]
        m = LAYER_NAME.match(key)
        source_key = f"{m.group(1)}.{layers[int(m.group(2))]}.{m.group(3)}"
        theirs = tuple(source[source_key].shape) if source_key in source else "absent"
        raise UserError(f"{len(unfit)} of the student's layer tensors do not fit the source's (e.g. {key}: student "
                        f"{tuple(target[key].shape)}, source {theirs}): a student of another width or shape cannot "
                        "be initialised from these layers; use student.init=random (narrow students learn through "
                        "the emb/hid projections) or the source's width")
    student.load_state_dict(picked, strict=False)
    if getattr(student.config, "tie_word_embeddings", True):
        student.tie_weights()
    return sorted(picked), skipped


def load_complete(model_class, name_or_path: str, role: str, new_head: bool = False) -> nn.Module:
    """A model whose every weight comes from the checkpoint (with `new_head`, all but the head's, which is
    then trained). A teacher with weights initialised at random, e.g. a BERT loaded as an ELECTRA
    discriminator, would distil noise silently."""
    try:
        # fp32 master weights whatever the checkpoint's dtype; mixed precision is autocast's job
        model, info = model_class.from_pretrained(name_or_path, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the {role} from '{name_or_path}': give a local directory saved with "
                        f"save_pretrained, or a hub name when online ({one_line(e)})") from e
    missing = [k for k in info["missing_keys"] if not new_head or k.startswith(model.base_model_prefix + ".")]
    if missing:
        raise UserError(f"the {role} '{name_or_path}' lacks {len(missing)} weights a {model.__class__.__name__} needs "
                        f"(e.g. {sorted(missing)[0]}; it is a '{model.config.model_type}' checkpoint): give a "
                        f"complete {model.__class__.__name__} checkpoint")
    check_finite_weights(model, role, name_or_path)
    return model


def check_finite_weights(model: nn.Module, role: str, name_or_path: str) -> None:
    """A NaN or inf in a loaded model (a teacher's frozen layer, say) would poison every loss far from its cause."""
    broken = [k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise UserError(f"the {role} '{name_or_path}' has non-finite (NaN or inf) weights in {len(broken)} tensor(s), "
                        f"e.g. {', '.join(broken[:3])}: it is broken; give a finite checkpoint (an earlier one)")


def load_masked_lm(name_or_path: str, new_head: bool = False) -> nn.Module:
    """A masked-LM teacher, every weight from the checkpoint; `new_head`: an encoder whose MLM head starts
    fresh (MLM adaptation trains it)."""
    return load_complete(AutoModelForMaskedLM, name_or_path, "masked-LM model", new_head)


def build_student(teacher: nn.Module, cfg: StudentConfig, model_class=None) -> tuple[nn.Module, LayerMap, dict]:
    """Student model, its layer map (for the intermediate losses), and an init report."""
    layer_map = resolve_layer_map(cfg.layers, family_of(teacher).depth(teacher.config), cfg.num_layers)
    config = student_config(teacher.config, cfg)
    if cfg.arch == "distilbert":
        student = DistilBertForMaskedLM(config)
    else:
        student = model_class(config) if model_class else AutoModelForMaskedLM.from_config(config)
    report: dict = {"init": cfg.init, "layer_map": list(layer_map.teacher_layers)}
    if cfg.init == "teacher":
        source = teacher.state_dict()
        if cfg.arch == "distilbert" and teacher.config.model_type == "bert":
            source = bert_to_distilbert(source)
        report["copied"], report["not_copied"] = copy_layers(source, student, layer_map.teacher_layers)
        report["layers"] = list(layer_map.teacher_layers)
    elif cfg.init == "checkpoint":
        if not cfg.init_checkpoint or len(cfg.init_layers) != cfg.num_layers:
            raise UserError("student.init=checkpoint needs student.init_checkpoint and student.init_layers "
                             f"with {cfg.num_layers} entries (e.g. 0,2,3,5 of a DistilBERT)")
        donor = load_complete(model_class or AutoModelForMaskedLM, cfg.init_checkpoint, "student.init_checkpoint")
        source = donor.state_dict()
        if cfg.arch == "distilbert" and donor.config.model_type == "bert":
            source = bert_to_distilbert(source)
        n_donor = family_of(donor).depth(donor.config)
        if any(not 0 <= i < n_donor for i in cfg.init_layers):
            raise UserError(f"student.init_layers {cfg.init_layers} outside the checkpoint's 0..{n_donor - 1}")
        report["copied"], report["not_copied"] = copy_layers(source, student, cfg.init_layers)
        report["layers"] = list(cfg.init_layers)
    return student, layer_map, report


def save_untrained_student(teacher: str | Path, student: StudentConfig, out: Path, model_class) -> Path:
    """A control row's model saved as built, not trained: the teacher's layers copied (student.init=teacher) or
    random weights (init=random, drawn with seed 0)."""
    out = Path(out)
    if not (out / "config.json").is_file():
        torch.manual_seed(0)
        model = model_class.from_pretrained(teacher)
        built, _, _ = build_student(model, student, model_class=type(model))
        tmp = atomic_dir(out)
        built.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(teacher).save_pretrained(tmp)
        commit_dir(tmp, out)
    return out
