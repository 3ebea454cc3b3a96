"""Every shipped config parses into its config class (an unknown key in a recipe is a bug)."""
from pathlib import Path

import pytest

from bert_kd.distill import DistilConfig
from electra_kd.ablate import AblationConfig
from kd_core.config import load_config
from kd_core.layer_map import resolve_layer_map

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))
KIND = {"distilbert": DistilConfig, "greek": DistilConfig, "tinybert": DistilConfig, "minilm": DistilConfig,
        "electra_ablation": AblationConfig}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path):
    cls = next(c for prefix, c in KIND.items() if path.name.startswith(prefix))
    cfg = load_config(cls, path)
    if isinstance(cfg, DistilConfig) and cfg.teacher == "bert-base-uncased":
        resolve_layer_map(cfg.student.layers, 12, cfg.student.num_layers)  # presets fit a 12-layer BERT
