"""Inference helpers shared by ``gdet detect``, ``tools/test_det.py`` and the demo: proposal sources, JSON rows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import Tensor

from gdet.errors import GdetError

__all__ = ["ProposalSource", "detections_to_rows", "format_table"]


class ProposalSource:
    """Where the proposals of an image come from: a method computed on the fly, or a proposal file.

    Args:
        spec: ``ss`` | ``ss_quality`` | ``selectivesearch`` | ``multibox`` | ``combined`` (methods of
            :func:`gdet.proposals.build_proposer`), or the path of a ``.npz`` proposal file.
        multibox_weights: MultiBox checkpoint for ``multibox`` and ``combined``.
        options: extra method options (e.g. ``{"max_side": 500}``).
    """

    def __init__(self, spec: str, multibox_weights: str | None = None, options: dict | None = None):
        from gdet.proposals import build_proposer, list_proposers, load_proposals

        self.spec = str(spec)
        self.proposer = None
        self.file = None
        if self.spec.endswith(".npz") or os.path.isfile(self.spec):
            self.file = load_proposals(self.spec)
        elif self.spec in list_proposers():
            kw = dict(options or {})
            if self.spec in ("multibox", "combined"):
                if not multibox_weights:
                    raise GdetError(f"proposals {self.spec!r} need a MultiBox checkpoint (--multibox-weights)")
                kw["weights"] = multibox_weights
            self.proposer = build_proposer(self.spec, **kw)
        else:
            raise GdetError(f"proposals {self.spec!r}: not a proposal file and not a method "
                            f"({', '.join(list_proposers())})")

    def __call__(self, image_id: Any, rgb: np.ndarray, path: str | None = None) -> Tensor:
        """Proposals (Tensor[N, 4]) of one image, best first."""
        if self.proposer is not None:
            return self.proposer.propose(rgb)[0]
        keys = [image_id]
        if path is not None:
            keys += [Path(path).stem, str(path), Path(path).name]
        for k in keys:
            if k in self.file:
                return self.file[k][0]
        raise GdetError(f"{self.spec}: no proposals for image {image_id!r}")


def detections_to_rows(dets: dict, class_names: Sequence[str]) -> list[dict]:
    """Per-image detections as JSON-ready rows ``{"box": [x1, y1, x2, y2], "score", "label", "class"}``."""
    rows = []
    for b, s, lab in zip(dets["boxes"].tolist(), dets["scores"].tolist(), dets["labels"].tolist()):
        rows.append({"box": [round(v, 2) for v in b], "score": round(float(s), 5), "label": int(lab),
                     "class": class_names[int(lab)]})
    return rows


def format_table(image: str, rows: list[dict]) -> str:
    """A plain text table of one image's detections."""
    lines = [f"{image}: {len(rows)} detection(s)"]
    if rows:
        lines.append(f"  {'#':>3}  {'class':<14} {'score':>6}   box (x1, y1, x2, y2)")
        for i, r in enumerate(rows, 1):
            box = ", ".join(f"{v:.0f}" for v in r["box"])
            lines.append(f"  {i:>3}  {r['class']:<14} {r['score']:>6.3f}   ({box})")
    return "\n".join(lines)
