"""Strict dataclass configs loaded from YAML, with `--set section.key=value` overrides.

A config is a tree of dataclasses. Loading rejects unknown keys (naming the key and the valid
ones) and checks value types, so a typo in a sweep never silently trains the default.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError, one_line

T = TypeVar("T")


class YAML12Loader(yaml.SafeLoader):
    """YAML with 1.2 scalars: only true/false are booleans (so `precision: no` stays the string "no")
    and 5e-5 is a float (YAML 1.1 needs a dot: 5.0e-5)."""


YAML12Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YAML12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=YAML12Loader)


class ConfigError(UserError):
    """A config file or override that cannot be applied."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "5e-5" as a string
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and missing required keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"unknown config key '{name}' in section '{where or '<root>'}'; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{path}'")
    return check_ranges(cls(**kwargs), where)


def check_ranges(cfg: T, where: str = "") -> T:
    """Raise for values out of their field's range: a section lists its own in `problems()`, checked
    recursively, so `train.log_every=0` fails when the config loads, not as a ZeroDivisionError later."""
    found = list(cfg.problems()) if hasattr(cfg, "problems") else []
    if found:
        prefix = f"{where}." if where else ""
        raise ConfigError("; ".join(f"{prefix}{p}" for p in found))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, f"{where}.{f.name}" if where else f.name)
        elif isinstance(value, dict) and f.name.endswith("weights"):
            bad = {k: w for k, w in value.items() if not (isinstance(w, (int, float)) and w >= 0)}
            if bad:
                raise ConfigError(f"{where + '.' if where else ''}{f.name}: weights must be numbers >= 0, got {bad}")
    return cfg


def out_of_range(checks: list[tuple[bool, str]]) -> list[str]:
    """The messages of the checks that hold a problem: `[(not x >= 1, "x=0: give 1 or more"), ...]`."""
    return [message for bad, message in checks if bad]


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=5e-5' -> (['train', 'lr'], 5e-05). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e})") from e
    return path, value


def _section(tp: Any) -> type | None:
    """The dataclass a field holds (a config section), or None for a value (a dict of weights included)."""
    for candidate in (tp, *typing.get_args(tp)):
        if _is_dataclass_type(candidate):
            return candidate
    return None


def _field_types(cls: type | None) -> dict[str, Any]:
    return typing.get_type_hints(cls) if cls is not None else {}


def defaults_data(cls: type) -> dict:
    """The defaults of `cls` as plain data (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            continue
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return yaml.safe_load(yaml.safe_dump(out))  # a deep copy as plain data


def merge_given(cls: type | None, data: dict, given: dict) -> dict:
    """`given` over `data`: a section merges key by key; any other value, a mapping of weights included,
    replaces the default (a given `{att: 1}` means att alone, not att on top of the defaults)."""
    out = dict(data)
    types_ = _field_types(cls)
    for key, value in given.items():
        section = _section(types_.get(key))
        if section is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_given(section, out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: list[str], cls: type | None = None) -> dict:
    """A copy of `data` with each `a.b.c=value` set. A dotted key into a mapping sets that one key
    (`loss_weights.att=1` adds att to the weights); a mapping given whole replaces (`loss_weights={att: 1}`)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node, node_cls = data, cls
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node, node_cls = child, _section(_field_types(node_cls).get(part))
        node.update(merge_given(node_cls, node, {path[-1]: value}))
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> T:
    """Load `cls`: its defaults, then `base`, then the YAML at `path`, then the overrides."""
    data = merge_given(cls, defaults_data(cls), base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid YAML: {one_line(e)}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = merge_given(cls, data, loaded)
    return from_dict(cls, apply_overrides(data, overrides or [], cls))


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; lists become strings (for TensorBoard hparams)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out


def finished_with(run_dir: str | Path, cfg: Any) -> bool:
    """Whether `run_dir` holds a finished run (final/) made with `cfg`. A finished run made with other settings is an
    error naming each difference, never silently reused as if it were this one; an unfinished one is resumed by its
    caller (the engine's --resume checks the config against the checkpoint's)."""
    run_dir = Path(run_dir)
    if not (run_dir / "final" / "config.json").is_file():
        return False
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UserError(f"{run_dir} holds a finished model but no config.yaml, so how it was made cannot be checked; "
                        "delete the folder to train it again")
    saved = flatten(yaml_load(saved_path.read_text()) or {})
    now = flatten(yaml_load(dump_config(cfg)))
    changed = [f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in sorted(saved.keys() | now.keys())
               if saved.get(k) != now.get(k)]
    if changed:
        raise UserError(f"{run_dir} was trained with other settings ({'; '.join(changed)}); use a new --output-dir, "
                        "or delete that folder to train it again")
    return True
