from dataclasses import dataclass, field

import pytest

from kd_core.config import ConfigError, apply_overrides, dump_config, load_config, parse_override
from kd_core.engine import TrainConfig
from kd_core.pretrain import PretrainConfig


@dataclass
class Inner:
    lr: float = 1e-3
    layers: list[int] = field(default_factory=lambda: [0, 1])
    name: str | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    flag: bool = False
    weights: dict[str, float] = field(default_factory=lambda: {"ce": 1.0})


def test_unknown_key_names_the_key_and_lists_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, path)
    assert "inner.lrr" in str(e.value)
    assert "layers, lr, name" in str(e.value)


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(PretrainConfig, overrides=["trian.lr=1"])


@pytest.mark.parametrize("text,path,value", [
    ("train.lr=5e-5", ["train", "lr"], 5e-5),
    ("a.b.c=3", ["a", "b", "c"], 3),
    ("flag=true", ["flag"], True),
    ("x=[0, 4, 7, 11]", ["x"], [0, 4, 7, 11]),
    ("name=null", ["name"], None),
    ("s=hello world", ["s"], "hello world"),
    ("eq=a=b", ["eq"], "a=b"),
])
def test_parse_override(text, path, value):
    assert parse_override(text) == (path, value)


def test_override_errors():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"steps": 3}, ["steps.x=1"])


def test_overrides_apply_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\ninner:\n  lr: 1e-4\n")
    cfg = load_config(Outer, path, ["inner.layers=0,4,7,11", "flag=true", "weights.kl=0.5", "steps=7"])
    assert cfg.steps == 7 and cfg.flag is True
    assert cfg.inner.lr == pytest.approx(1e-4)  # YAML reads 1e-4 as a string; coerced to float
    assert cfg.inner.layers == [0, 4, 7, 11]
    assert cfg.weights == {"ce": 1.0, "kl": 0.5}  # a dotted key sets one key of the default mapping


def test_a_mapping_given_whole_replaces_the_default(tmp_path):
    """An ablation must run what it says: {kl: 0.5} is kl alone, not kl on top of the default ce."""
    assert load_config(Outer, overrides=["weights={kl: 0.5}"]).weights == {"kl": 0.5}
    path = tmp_path / "c.yaml"
    path.write_text("weights: {kl: 0.5}\ninner: {lr: 0.1}\n")
    cfg = load_config(Outer, path)
    assert cfg.weights == {"kl": 0.5}
    assert cfg.inner.lr == 0.1 and cfg.inner.layers == [0, 1]  # a section still merges key by key
    assert load_config(Outer, path, ["weights.ce=2"]).weights == {"kl": 0.5, "ce": 2.0}


def test_malformed_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(Outer, path)


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Outer, overrides=["steps=abc"])
    with pytest.raises(ConfigError, match="train.schedule: 'cosin' is not one of"):
        load_config(PretrainConfig, overrides=["train.schedule=cosin"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, "/nonexistent/c.yaml")


def test_dump_round_trip(tmp_path):
    cfg = load_config(PretrainConfig, overrides=["train.lr=3e-4", "model.arch.hidden_size=64"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(PretrainConfig, path) == cfg
    assert isinstance(cfg.train, TrainConfig)
