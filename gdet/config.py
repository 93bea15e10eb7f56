"""Flat YAML configs with at most one level of ``base:`` and ``key=value`` overrides from the command line, and
table-driven range checks of their values (:func:`check_config`)."""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

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
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (is it a YAML config?)") from None
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
            raise ConfigError(f"override {item!r}: {unknown_key(keys[0], cfg)}")
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
    if base_name is not None and not isinstance(base_name, str):
        raise ConfigError(f"{path}: base: expected the name of a config file, got {base_name!r}")
    if base_name is not None:
        base_path = (path.parent / base_name).resolve()
        base = _read_yaml(base_path)
        if "base" in base:
            raise ConfigError(f"{base_path}: a base config may not have a base of its own (one level only)")
        cfg = _merge(base, cfg)
    if defaults:
        unknown = sorted(set(cfg) - set(defaults))
        if unknown:
            raise ConfigError(f"{path}: {unknown_key(unknown[0], defaults)}"
                              + (f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""))
        cfg = _merge(defaults, cfg)
    cfg = apply_overrides(cfg, overrides)
    if defaults:
        _check_types(cfg, defaults, path)
    return cfg


# Keys that name a file or folder although their default is None, and keys that hold a list of numbers whose
# builder has no check of its own.
PATH_KEYS = ("data", "val_data", "weights", "resume", "val_proposals", "distill")
NUMBER_LIST_KEYS = ("lr_milestones",)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_types(cfg: dict, defaults: dict, path: Path) -> None:
    """Each key must hold its default's type: a number, true or false, a string (a path or a name: also the keys
    of :data:`PATH_KEYS`), a list of numbers (:data:`NUMBER_LIST_KEYS`). ``epochs=abc`` or ``work_dir: [a]``
    fails here, with the key's name, not deep inside training. Other keys are the builder's to check."""
    for key, default in defaults.items():
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif _is_number(default):
            ok, want = _is_number(value), "a number"
        elif isinstance(default, str) or (default is None and key in PATH_KEYS):
            if _is_number(value):  # a folder or split named 2012 reads as a number from YAML
                cfg[key] = value = str(value)
            ok, want = isinstance(value, str), "a string"
        elif key in NUMBER_LIST_KEYS:
            ok, want = isinstance(value, list) and all(_is_number(v) for v in value), "a list of numbers"
        else:
            continue
        if not ok:
            raise ConfigError(f"{path}: {key}: expected {want}, got {value!r}")


def unknown_key(key: str, known: Iterable[str], what: str = "key") -> str:
    """``"unknown key 'epoch' (did you mean 'epochs'?)"``: the closest known names, not all of them."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {key!r}{hint}"


def check_choice(value: Any, options: Iterable[str], key: str) -> None:
    """Raise ``"<key>: unknown option 'x' (did you mean 'y'?)"`` unless ``value`` is one of ``options``."""
    options = list(options)
    if value not in options:
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"use {', '.join(options)}"
        raise ConfigError(f"{key}: unknown option {value!r} ({hint})")


# ---------------------------------------------------------------------------------------------- range checks
# A check is a function ``check(value, cfg) -> problem or None``; a task module lists one per key in a dict
# (its ``CHECKS``) and :func:`check_config` runs the table, so every range lives in one place.
Check = Callable[[Any, dict], "str | None"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(*, gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None,
           integer: bool = False, null: bool = False) -> Check:
    """A finite number (an integer with ``integer``) within the given bounds; ``null`` also accepts None."""
    def check(v: Any, cfg: dict) -> str | None:
        if v is None:
            return None if null else "must be set (got null)"
        if not _is_number(v) or not math.isfinite(v):
            return f"must be a finite number, got {v!r}"
        if integer and float(v) != int(v):
            return f"must be a whole number, got {v!r}"
        for bound, ok, word in ((gt, lambda b: v > b, ">"), (ge, lambda b: v >= b, ">="),
                                (lt, lambda b: v < b, "<"), (le, lambda b: v <= b, "<=")):
            if bound is not None and not ok(bound):
                return f"must be {word} {bound}{' or null' if null else ''}, got {v!r}"
        return None
    return check


def interval(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A number in an interval, written ``[0, 1)`` etc. in the message."""
    text = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def check(v: Any, cfg: dict) -> str | None:
        if not _is_number(v) or not math.isfinite(v):
            return f"must be a number in {text}, got {v!r}"
        if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
            return f"must be in {text}, got {v!r}"
        return None
    return check


def ordered_pair(lo: float = 0.0, hi: float = 1.0, *, lo_open: bool = True) -> Check:
    """``[min, max]`` with ``min <= max``, both in ``(lo, hi]`` (``[lo, hi]`` without ``lo_open``)."""
    inside = interval(lo, hi, lo_open=lo_open)

    def check(v: Any, cfg: dict) -> str | None:
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            return f"must be a pair [min, max], got {v!r}"
        for x in v:
            problem = inside(x, cfg)
            if problem:
                return f"{problem} (in {list(v)})"
        if v[0] > v[1]:
            return f"min > max in {list(v)}"
        return None
    return check


def one_of(*options: str) -> Check:
    def check(v: Any, cfg: dict) -> str | None:
        if v not in options:
            close = difflib.get_close_matches(str(v), list(options), n=1, cutoff=0.5)
            return f"unknown option {v!r} ({f'did you mean {close[0]!r}?' if close else 'use ' + ', '.join(options)})"
        return None
    return check


def mapping(v: Any, cfg: dict) -> str | None:
    """A dict (``{}`` for none)."""
    return None if isinstance(v, dict) else f"must be a mapping such as {{dropout: 0.4}}, got {v!r}"


def complete_config(cfg: dict, defaults: dict, checks: dict[str, Check], data_hint: str) -> dict:
    """A trainer's config: ``cfg`` over ``defaults`` (a copy), ``data`` required (``data_hint`` says what it is),
    every key's range checked by ``checks`` (one-line :class:`ConfigError`)."""
    cfg = {**copy.deepcopy(defaults), **cfg}
    if not cfg.get("data"):
        raise ConfigError(f"data: {data_hint} (data=PATH)")
    check_config(cfg, checks)
    return cfg


def check_config(cfg: dict, checks: dict[str, Check], where: str | None = None) -> None:
    """Run every check of the table ``checks`` on ``cfg``; the first problem raises a one-line
    :class:`ConfigError` ``"<key>: <problem>"`` (prefixed by ``where``, e.g. the config file, when given)."""
    for key, check in checks.items():
        if key not in cfg:
            continue
        problem = check(cfg[key], cfg)
        if problem:
            raise ConfigError(f"{where + ': ' if where else ''}{key}: {problem}")
