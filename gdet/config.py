"""Flat YAML configs with at most one level of ``base:`` and ``key=value`` overrides from the command line."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from gdet.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but ``1e-3`` is a float (YAML 1.2; PyYAML follows 1.1, which needs ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _load(text_or_file):
    return yaml.load(text_or_file, Loader=_Loader)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = _load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` into (["a", "b"], value); the value is read as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = _load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(cfg: dict, overrides: Iterable[str], strict: bool = True) -> dict:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied.

    With ``strict`` an unknown top-level key is an error (a typo should not be silently ignored).
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        keys, value = parse_override(item)
        if strict and keys[0] not in cfg:
            known = ", ".join(sorted(cfg))
            raise ConfigError(f"override {item!r}: unknown key {keys[0]!r} (known: {known})")
        node = cfg
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return cfg


def load_config(path: str | os.PathLike, overrides: Iterable[str] = (), defaults: dict | None = None) -> dict:
    """Load a YAML config.

    ``base: other.yaml`` (relative to the file) is merged underneath; the base itself may not have a base,
    so any config is knowable from at most two files. ``defaults`` (a builder's defaults) lie under both,
    and overrides must name keys that exist in the merged result.
    """
    path = Path(path)
    cfg = _read_yaml(path)
    base_name = cfg.pop("base", None)
    if base_name is not None:
        base_path = (path.parent / base_name).resolve()
        base = _read_yaml(base_path)
        if "base" in base:
            raise ConfigError(f"{base_path}: a base config may not have a base of its own (one level only)")
        cfg = _merge(base, cfg)
    if defaults:
        unknown = sorted(set(cfg) - set(defaults))
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(defaults))})")
        cfg = _merge(defaults, cfg)
    cfg = apply_overrides(cfg, overrides)
    if defaults:
        _check_numbers(cfg, defaults, path)
    return cfg


def _check_numbers(cfg: dict, defaults: dict, path: Path) -> None:
    """Keys whose default is a number (or a bool) must hold one: ``epochs=abc`` fails here, with the key's name,
    not deep inside training. Keys defaulting to None or a string are the builder's to check."""
    for key, default in defaults.items():
        value = cfg.get(key)
        if value is None or isinstance(default, str) or default is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            want = "true or false" if isinstance(default, bool) else "a number"
            raise ConfigError(f"{path}: {key}: expected {want}, got {value!r}")
