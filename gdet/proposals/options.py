"""The options of every proposal method, with their types and ranges: the one place where ``--opt KEY=VALUE``
(and ``build_proposer(name, **options)``) is checked before a method is built or a worker is started.

Each method lists its options as ``key -> check``; a check returns a problem (``"must be a positive integer"``)
or None. An option the method does not have, or one its name or checkpoint fixes, is refused by name.
A method registered without a table here is not checked (its constructor's signature still refuses unknown keys).
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable

from gdet.errors import GdetError
from gdet.proposals.selective_search import OPENCV_STRATEGIES

# A check: value -> (problem or None, the value to use: whole floats such as 320.0 become ints).
Check = Callable[[Any], "tuple[str | None, Any]"]

SS_MODES = ("fast", "quality", "single")
MAX_SIDE = 16384  # pixels: far above any image a proposal method should resize to


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int = 1, hi: int | None = None, *, null: bool = False) -> Check:
    """A whole number in ``[lo, hi]``; ``null`` also accepts None."""
    if hi is not None:
        what = f"an integer in [{lo}, {hi}]"
    else:
        what = {1: "a positive integer", 0: "a non-negative integer"}.get(lo, f"an integer >= {lo}")
    what += " or null" if null else ""

    def check(v: Any):
        if v is None and null:
            return None, v
        if not _number(v) or not math.isfinite(v) or float(v) != int(v) or v < lo or (hi is not None and v > hi):
            return f"must be {what}, got {v!r}", v
        return None, int(v)
    return check


def real(*, gt: float | None = None, ge: float | None = None) -> Check:
    """A finite number above ``gt`` (or at least ``ge``)."""
    what = ("a positive number" if gt == 0 else "a non-negative number" if ge == 0
            else f"a number > {gt}" if gt is not None else f"a number >= {ge}")

    def check(v: Any):
        if not _number(v) or not math.isfinite(v) or (gt is not None and v <= gt) or (ge is not None and v < ge):
            return f"must be {what}, got {v!r}", v
        return None, float(v)
    return check


def interval(lo: float, hi: float, *, hi_open: bool = False) -> Check:
    """A number in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``)."""
    text = f"[{lo}, {hi}{')' if hi_open else ']'}"

    def check(v: Any):
        if not _number(v) or not math.isfinite(v) or v < lo or (v >= hi if hi_open else v > hi):
            return f"must be a number in {text}, got {v!r}", v
        return None, float(v)
    return check


def choice(*options: str) -> Check:
    def check(v: Any):
        if v not in options:
            close = difflib.get_close_matches(str(v), list(options), n=1, cutoff=0.5)
            return (f"unknown option {v!r} ({f'did you mean {close[0]!r}?' if close else 'use ' + ', '.join(options)})",
                    v)
        return None, v
    return check


def text(what: str) -> Check:
    def check(v: Any):
        if not isinstance(v, str) or not v.strip():
            return f"must be {what}, got {v!r}", v
        return None, v
    return check


def strategies(v: Any):
    """OpenCV merging strategies: ``color,fill`` or a list of 1 to 4 of color, texture, size, fill; null: the mode's."""
    if v is None:
        return None, v
    items = [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items) \
            or not 1 <= len(items) <= 4 or any(s not in OPENCV_STRATEGIES for s in items):
        return f"must be 1 to 4 of {', '.join(OPENCV_STRATEGIES)} (e.g. color,fill) or null, got {v!r}", v
    return None, v


def fixed(why: str) -> Check:
    """An option that the method's name or checkpoint sets: refused, saying why."""
    def check(v: Any):
        return f"cannot be set: {why}", v
    check.fixed = True  # type: ignore[attr-defined]
    return check


SS_COMMON: dict[str, Check] = {
    "max_side": integer(0, MAX_SIDE, null=True),
    "min_size": real(ge=0),
    "superpixel_scale": real(gt=0),
    "max_boxes": integer(1, null=True),
    # OpenCV's graph segmentations and ranking
    "base_k": integer(1),
    "inc_k": integer(0),
    "sigma": real(ge=0),
    "strategies": strategies,
    "seed": integer(0, 2**32 - 1),
    # the selectivesearch package
    "scale": real(gt=0),
    "sigma_pkg": real(ge=0),
    "min_region": integer(0),
}
SS: dict[str, Check] = {
    **SS_COMMON,
    "mode": choice(*SS_MODES),
    "backend": fixed("the method name chooses it (ss, ss_quality: OpenCV; selectivesearch: the package)"),
}
MULTIBOX: dict[str, Check] = {
    "weights": text("the path of a MultiBox checkpoint"),
    "device": text("a device name such as cpu or cuda"),
    "top_k": integer(1),
    "nms_iou": interval(0, 1),
    "min_size": real(ge=0),
    "tiles": integer(1, 16),
    "tile_overlap": interval(0, 1, hi_open=True),
    "input_size": fixed("the MultiBox checkpoint sets it (the input size it was trained at)"),
}
COMBINED: dict[str, Check] = {
    **{k: v for k, v in SS_COMMON.items() if k != "superpixel_scale"},
    **{k: MULTIBOX[k] for k in ("weights", "device", "tiles", "tile_overlap", "input_size")},
    "top_k": integer(0),
    "dup_iou": interval(0, 1),
    "superpixel_scale": real(gt=0),
    "ss_mode": choice(*SS_MODES),
    "mode": fixed("the selective search mode of 'combined' is ss_mode"),
    "backend": SS["backend"],
    "multibox_kwargs": "nested",  # type: ignore[dict-item]  # checked against MULTIBOX_NESTED below
}
# MultiBox options given to 'combined' in multibox_kwargs: the combination's own weights and device are used.
MULTIBOX_NESTED: dict[str, Check] = {
    **MULTIBOX,
    "weights": fixed("'combined' uses its own weights option"),
    "device": fixed("'combined' uses its own device option"),
}
OPTIONS: dict[str, dict[str, Check]] = {
    "ss": SS, "ss_quality": SS, "selectivesearch": SS, "multibox": MULTIBOX, "combined": COMBINED,
}


def _unknown(key: str, method: str, table: dict) -> str:
    known = [k for k, check in table.items() if not getattr(check, "fixed", False)]
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"its options: {', '.join(sorted(known))}"
    return f"proposal method {method!r} has no such option ({hint})"


def _check_table(table: dict[str, Check], method: str, options: dict, label: str, prefix: str = "") -> dict:
    out = {}
    for key, value in options.items():
        name = f"{label}{prefix}{key}"
        check = table.get(key) if isinstance(key, str) else None
        if check is None:
            raise GdetError(f"{name}: {_unknown(key, method, table)}")
        if check == "nested":
            if not isinstance(value, dict):
                raise GdetError(f"{name}: must be a mapping such as {{nms_iou: 0.5}}, got {value!r}")
            out[key] = _check_table(MULTIBOX_NESTED, "multibox", value, label, f"{key}.")
            continue
        problem, value = check(value)
        if problem:
            raise GdetError(f"{name}: {problem}")
        out[key] = value
    return out


def check_options(method: str, options: dict | None, label: str = "proposal option ") -> dict:
    """Check the options of proposal method ``method`` against its table; return them ready for the method
    (whole numbers given as floats, e.g. ``320.0``, become ints).

    Args:
        label: how the error names an option, before its key: ``"--opt "`` on the command line (``--opt max_side:
            must be ...``).

    Raises:
        GdetError: one line naming the option: unknown to the method, fixed by it, of the wrong type or out of
            range, e.g. ``"--opt max_side: must be an integer in [0, 16384] or null, got -5"``.
    """
    options = dict(options or {})
    table = OPTIONS.get(method)
    if table is None:
        return options
    return _check_table(table, method, options, label)
