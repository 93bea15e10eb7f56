"""Progress bars on the main rank, a JSONL metrics log, and training curves as PNG."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from gdet.engine.distributed import is_main_process
from gdet.plotting import pyplot, save_figure


def progress(iterable: Iterable | None = None, **kwargs):
    """A tqdm bar shown only on the main process (and never when ``GDET_NO_PROGRESS`` is set)."""
    disable = kwargs.pop("disable", False) or not is_main_process() or bool(os.environ.get("GDET_NO_PROGRESS"))
    return tqdm(iterable, disable=disable, dynamic_ncols=True, **kwargs)


def erase_on_error(bar):
    """Iterate ``bar`` (a :func:`progress` bar); if the loop stops early (an error in its body or in the data it
    iterates), the bar is erased instead of left on the screen, so that the command's one-line error is all it
    leaves."""
    inner = bar.iterable

    def guarded():  # an error from the data: tqdm closes the bar as the error passes, so erase it first
        try:
            yield from inner
        except BaseException:
            bar.leave = False
            raise

    if inner is not None:
        bar.iterable = guarded()
    finished = False
    steps = iter(bar)  # held here: ``yield from`` would let tqdm close (and print) the bar before it is erased
    try:
        for step in steps:
            yield step
        finished = True
    finally:
        if not finished:
            bar.leave = False
            bar.close()


class MetricLogger:
    """Appends one JSON object per line (per epoch or per evaluation) to ``path``; only the main rank writes."""

    def __init__(self, path: str | os.PathLike, resume: bool = False):
        self.path = Path(path)
        if is_main_process():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not resume and self.path.exists():
                self.path.unlink()

    def log(self, **metrics) -> None:
        if not is_main_process():
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
            f.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


_QUALITY = ("acc", "recall", "map", "ap", "ar", "top", "mabo", "prec")


def plot_curves(jsonl_path: str | os.PathLike, png_path: str | os.PathLike, x: str = "epoch",
                title: str | None = None) -> None:
    """Plot every numeric metric of a JSONL log against ``x``: losses on one panel, the rest on another."""
    plt = pyplot()

    rows = MetricLogger.__new__(MetricLogger)
    rows.path = Path(jsonl_path)
    rows = rows.read()
    if not rows:
        return
    keys = sorted({k for r in rows for k, v in r.items() if k != x and isinstance(v, (int, float))})
    keys = [k for k in keys if k not in ("lr", "time", "step", "steps", "iters", "images", "epoch_time")]
    speeds = [k for k in keys if "per_s" in k]  # throughput on its own panel: its scale would flatten the rest
    # Quality metrics (accuracy, recall, AP, ...) on one panel; losses and their parts (loc, conf, ...) on another.
    others = [k for k in keys if k not in speeds and any(t.startswith(_QUALITY) for t in re.split(r"[_@/]", k.lower()))]
    losses = [k for k in keys if k not in speeds and k not in others]
    panels = [(losses, "loss"), (others, "metric")] + ([(speeds, "per second")] if speeds else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for ax, (group, label) in zip(axes, panels):
        for k in group:
            pts = [(r[x], r[k]) for r in rows if k in r and x in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=k)
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
    save_figure(fig, png_path, title)
