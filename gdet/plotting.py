"""Figures: matplotlib without a display, and PNGs written atomically.

matplotlib is imported on first use, so commands that draw nothing never load it.
"""
from __future__ import annotations

import os

from gdet.io import atomic_path

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, title: str | None = None, dpi: int = 110, **title_kw) -> None:
    """Give ``fig`` its title, lay it out, write it to ``path`` (a complete file or none) and close it."""
    if title:
        fig.suptitle(title, **title_kw)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        pyplot().close(fig)
