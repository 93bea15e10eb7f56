"""Evaluation outputs: the per-class table, precision-recall curves as one PNG, and a JSON of every figure."""
from __future__ import annotations

import math
import os

import numpy as np

from gdet.io import save_json
from gdet.plotting import pyplot, save_figure


def _pct(v: float) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def format_table(result: dict) -> str:
    """The per-class table (AP in percent, #GT = non-ignored objects, #dets) followed by the summary lines."""
    rows = result["per_class"]
    has50 = any("ap50" in r for r in rows)
    w = max([len("class")] + [len(r["class"]) for r in rows])
    head = f"{'class':<{w}}  {'AP':>5}" + (f"  {'AP50':>5}" if has50 else "") + f"  {'#GT':>7}  {'#dets':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['class']:<{w}}  {_pct(r['ap'])}" + (f"  {_pct(r.get('ap50'))}" if has50 else "")
                     + f"  {r['num_gt']:>7}  {r['num_dets']:>8}")
    lines.append("-" * len(head))
    metric = result["metric"]
    if metric == "coco":
        s = result["summary"]
        lines.append("  ".join(f"{k} {_pct(s[k]).strip()}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
        lines.append("  ".join(f"{k} {_pct(s[k]).strip()}" for k in ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")))
    else:
        lines.append(f"mAP ({metric}) {_pct(result['mAP']).strip()} over {result['num_images']} images")
    return "\n".join(lines)


def jsonable(obj):
    """NaN -> None (valid JSON), numpy scalars -> Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def save_result_json(result: dict, path: str | os.PathLike) -> None:
    """Write the result dict (every number, NaN as null) atomically."""
    save_json(jsonable(result), path)


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
                   aps: dict[str, float] | None = None, title: str = "") -> None:
    """One PNG with a grid of precision-recall plots, one per class (raw curve and its monotone envelope).

    Args:
        curves: class name -> (recall[D], precision[D]).
        path: output ``.png`` (written atomically).
        aps: class name -> AP, shown in each panel's title.
        title: figure title.
    """
    plt = pyplot()

    names = list(curves)
    n = max(1, len(names))
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows), squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        rec, prec = curves[name]
        rec = np.nan_to_num(np.asarray(rec, dtype=np.float64))
        prec = np.asarray(prec, dtype=np.float64)
        if rec.size:
            env = np.maximum.accumulate(prec[::-1])[::-1]
            ax.plot(rec, prec, color="0.7", lw=0.8)
            ax.plot(rec, env, color="C0", lw=1.2)
        ap = (aps or {}).get(name)
        label = name if ap is None or math.isnan(ap) else f"{name}  AP {100 * ap:.1f}"
        ax.set_title(label, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision", fontsize=7)
    save_figure(fig, path, title, dpi=100, fontsize=10)
