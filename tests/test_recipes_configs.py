"""Every shipped config parses into its config class (an unknown key in a recipe is a bug)."""
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


def test_quickstart_main_job_smoke(tmp_path, monkeypatch):
    """`SMOKE=1 make quickstart`: the whole main job in about a minute (teachers, students, fine-tuning, table)."""

    from conftest import needs_shared_data

    needs_shared_data("glue", "SST-2")
    needs_shared_data("corpus")
    from kd_core.assets import minilm_dir

    from kd_core.errors import UserError

    try:
        minilm_dir()
    except UserError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("ELECTRA_KD_CACHE", str(tmp_path / "cache"))
    import quickstart

    assert quickstart.main(["--smoke", "--output-dir", str(tmp_path / "qs")]) == 0
    table = (tmp_path / "qs" / "quickstart.md").read_text()
    for row in ("MLM teacher (6 layers)", "BERT truncated, not distilled (3 layers)", "BERT student, distilled (3 layers)",
                "ELECTRA teacher (6 layers)", "ELECTRA truncated, not distilled (3 layers)",
                "ELECTRA student, distilled (3 layers)"):
        assert f"| {row} |" in table
    assert "| BERT distilled (mean ± std, seeds) | BERT truncated" in table and table.count("| sst2 | accuracy |") == 2
    assert table.count("| 2 x 1 |") == 2  # each student: 2 distillation seeds x 1 fine-tuning seed (smoke), pooled
    assert "tensorboard --logdir" in table
    assert "median of 2 interleaved passes" in table and "speed-up vs teacher" in table
    assert (tmp_path / "qs" / "quickstart.png").read_bytes().startswith(b"\x89PNG")
