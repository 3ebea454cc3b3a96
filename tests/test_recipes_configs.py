"""Every shipped config parses into its config class (an unknown key in a recipe is a bug)."""
import json
from pathlib import Path

import pytest

from electra_kd.distill import ElectraRunConfig

from bert_kd.distill import DistilConfig
from electra_kd.ablate import AblationConfig
from kd_core.config import load_config
from kd_core.layer_map import resolve_layer_map

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))
KIND = {"distilbert": DistilConfig, "greek": DistilConfig, "tinybert": DistilConfig, "minilm": DistilConfig,
        "electra_ablation": AblationConfig, "electra_distill": ElectraRunConfig}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path):
    cls = next(c for prefix, c in KIND.items() if path.name.startswith(prefix))
    cfg = load_config(cls, path)
    if isinstance(cfg, DistilConfig) and cfg.teacher == "bert-base-uncased":
        resolve_layer_map(cfg.student.layers, 12, cfg.student.num_layers)  # presets fit a 12-layer BERT


def test_distilbert_table3_smoke(tmp_path):

    import distilbert_table3

    out = tmp_path / "t3.md"
    assert distilbert_table3.main(["--scale", "smoke", "--results", str(out)]) == 0
    text = out.read_text()
    assert "| tiny student (1 layer) |" in text and "DistilBERT (paper, quoted) | 66 | 410" in text
    assert '"pairs": 20' in text


def test_teachers_recipe_builds_once_and_caches(tmp_path, tiny_tokenizer, tiny_corpus, monkeypatch):

    from kd_core.toy import tiny_bert_teacher

    import teachers

    monkeypatch.setenv("ELECTRA_KD_CACHE", str(tmp_path / "cache"))
    encoder = tmp_path / "encoder"
    tiny_bert_teacher(encoder, tiny_tokenizer, layers=2)
    small = ["train.batch_size=8", "train.micro_batch_size=8", "train.eval_batches=1", "head_steps=1"]

    def build(kind, steps, enc, extra=()):  # tiny random teachers cannot pass their gate: report it
        return teachers.build_teacher(kind, str(tiny_corpus), steps=steps, overrides=[*small, *extra], encoder=enc,
                                      gate="report")

    mlm = build("mlm", 2, encoder)
    assert mlm.parent == tmp_path / "cache" / "teachers" and (mlm / "final" / "config.json").is_file()
    assert (mlm / "card.json").is_file()
    stamp = (mlm / "final" / "model.safetensors").stat().st_mtime_ns
    again = build("mlm", 2, encoder)
    assert again == mlm and (mlm / "final" / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    import shutil

    moved = shutil.copytree(encoder, tmp_path / "elsewhere" / "encoder")  # the same weights installed elsewhere
    assert build("mlm", 2, moved) == mlm
    longer = build("mlm", 3, encoder)
    assert longer != mlm  # another input, another teacher
    gen = [f"generator_mlm.{o}" for o in small] + ["generator_mlm.train.max_steps=2"]
    electra = teachers.build_teacher("electra", str(tiny_corpus), steps=2, encoder=encoder, gate="report",
                                     overrides=[o for o in small if o.startswith("train.")] + gen)
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    assert ElectraForPreTraining.from_pretrained(electra / "final").config.num_hidden_layers == 2
    # the generator is the cached MLM teacher of the same recipe, converted (same width as the encoder)
    assert ElectraForMaskedLM.from_pretrained(electra / "generator").config.hidden_size == 32
    assert (electra / "card.json").is_file()


def test_quickstart_main_job_smoke(tmp_path):
    """`SMOKE=1 make quickstart`: the whole main job on a few hundred sentences (teacher, the three student rows, the
    claims with their intervals, latency)."""
    from kd_core.assets import minilm_dir
    from kd_core.errors import UserError

    try:
        minilm_dir()
    except UserError as e:
        pytest.skip(str(e))
    import quickstart

    assert quickstart.main(["--smoke", "--output-dir", str(tmp_path / "qs"), "--results", str(tmp_path / "r.md")]) == 0
    table = (tmp_path / "qs" / "quickstart.md").read_text()
    assert (tmp_path / "r.md").read_text() == table
    for row in ("teacher: MiniLM-L6, fine-tuned (6 layers)", "student, labels only (control)",
                "student, soft labels on the labelled set", "student, distilled with the transfer set"):
        assert f"| {row} |" in table
    claim = next(line for line in table.splitlines()
                 if line.startswith("| student, distilled with the transfer set - student, labels only (control) |"))
    cells = claim.split(" | ")
    assert cells[1] == "2, 2" and cells[3].startswith("[") and cells[7] == "dev examples, fine-tuning seeds"
    assert "the smallest this table can resolve" in table and "200 unlabelled sentences" in table
    run = json.loads((tmp_path / "qs" / "distilled" / "sst2" / "lr0.0002_bs32" / "seed0" / "result.json").read_text())
    assert (run["train_examples"], run["transfer_examples"]) == (64, 200)
