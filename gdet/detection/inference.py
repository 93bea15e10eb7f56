"""Detection over many images, shared by ``gdet detect``, ``gdet test`` (``tools/test_det.py``), ``gdet demo`` and
training-time evaluation: where proposals come from, detecting a split, and the files and tables written."""
from __future__ import annotations

import contextlib
import inspect
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from gdet.data import read_image
from gdet.detection.model import Detector, EnsembleDetector, detect_image
from gdet.engine import erase_on_error, progress
from gdet.errors import GdetError
from gdet.io import atomic_write
from gdet.proposals import ProposalSet, build_proposer, check_options, list_proposers, load_proposals
from gdet.structures import ImageRecord

__all__ = ["DEFAULTS", "EVAL_MAX_PROPOSALS", "EVAL_SCORE_THR", "ProposalSource", "detect_records", "detections_to_rows",
           "detector_proposals", "format_table", "image_ids_for", "training_proposals", "write_detections"]

# Defaults of the commands that detect and draw (gdet detect, gdet demo): R-CNN's per-class NMS at IoU 0.3; 300
# proposals, what the shipped detector is measured with; the score threshold is for what is shown.
DEFAULTS: dict[str, Any] = {"proposals": "ss", "max_proposals": 300, "score_thr": 0.5, "nms_iou": 0.3,
                            "max_dets": 100}
# Scoring a split (gdet test, the demo's mAP) keeps low-scoring detections too, and uses R-CNN's 2000 proposals.
EVAL_SCORE_THR = 0.001
EVAL_MAX_PROPOSALS = 2000
METHODS_WITH_WEIGHTS = ("multibox", "combined")
# Methods whose proposal files record every option they were run with (MultiBox files do not carry the checkpoint).
RECORDED_METHODS = ("ss", "ss_quality", "selectivesearch")


def _method_defaults() -> dict[str, Any]:
    """Selective search's options and their defaults (the method name fixes ``backend`` and ``mode``)."""
    from gdet.proposals.selective_search import SelectiveSearch

    params = inspect.signature(SelectiveSearch.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "backend", "mode")}


def training_proposals(props: ProposalSet) -> dict | None:
    """The method and options a detector's training proposals were computed with (from the file's metadata), as
    the detector records them: ``{"method": "ss", "max_side": 320, ...}``; None when the file does not say."""
    method = props.meta.get("method")
    if method not in RECORDED_METHODS:
        return None
    defaults = _method_defaults()
    return {"method": method, **{k: v for k, v in props.meta.items() if k in defaults}}


def detector_proposals(spec: str | None, options: dict | None, model: Detector | EnsembleDetector
                       ) -> tuple[str, dict, str | None]:
    """The proposal method and options the commands that detect use: ``spec`` (None: the method the detector was
    trained with, else ``ss``) with, when it is the detector's training method, the detector's training options
    under ``options``. Returns ``(spec, options, note)``; ``note`` names the options taken from the detector."""
    trained = getattr(model, "proposals", None)
    chosen = spec is None and bool(trained) and trained["method"] != DEFAULTS["proposals"]
    if spec is None:
        spec = trained["method"] if trained else DEFAULTS["proposals"]
    options = dict(options or {})
    if not trained or spec != trained["method"]:
        return spec, options, None
    stored = {k: v for k, v in trained.items() if k != "method"}
    defaults = _method_defaults()
    taken = {k: v for k, v in stored.items() if k not in options and v != defaults.get(k)}
    note = None
    if taken or chosen:
        what = (f"with the detector's training options ({', '.join(f'{k}={v}' for k, v in taken.items())}; "
                "--opt KEY=VALUE overrides)") if taken else "as the detector was trained"
        note = f"proposals: {spec} {what}"
    return spec, {**stored, **options}, note


class ProposalSource:
    """Where the proposals of an image come from: a method run on the image, or a proposal file.

    The one place where a proposal spec becomes boxes.

    Args:
        spec: a method of :func:`gdet.proposals.build_proposer` (``ss``, ``ss_quality``, ``selectivesearch``,
            ``multibox``, ``combined``), the path of a ``.npz`` proposal file, or a loaded
            :class:`~gdet.proposals.ProposalSet`.
        weights: the MultiBox checkpoint of ``multibox`` and ``combined``.
        options: method options (e.g. ``{"max_side": 500}``; ``--opt KEY=VALUE`` on the command line), checked
            here, before any proposal worker starts.
        options_label: how an error names an option before its key (``--opt max_side: must be ...``).
    """

    def __init__(self, spec: str | os.PathLike | ProposalSet, weights: str | os.PathLike | None = None,
                 options: dict | None = None, options_label: str = "--opt "):
        self.proposer = None
        self.file: ProposalSet | None = None
        self.method_kwargs: dict = {}
        if isinstance(spec, ProposalSet):
            self.spec, self.file = "proposal set", spec
        elif str(spec) in list_proposers():
            self.spec = str(spec)
            kw = check_options(self.spec, options, options_label)
            if self.spec in METHODS_WITH_WEIGHTS:
                if not weights:
                    raise GdetError(f"proposals {self.spec!r} need a MultiBox checkpoint (--proposal-weights)")
                kw["weights"] = str(weights)
            self.method_kwargs = kw
            self.proposer = build_proposer(self.spec, **kw)
        elif str(spec).endswith(".npz") or os.path.isfile(spec):
            self.spec = str(spec)
            if options:
                raise GdetError(f"{spec}: proposal options ({', '.join(options)}) apply to a method, not to a file")
            self.file = load_proposals(spec)
        else:
            raise GdetError(f"proposals {str(spec)!r}: not a proposal file and not a method "
                            f"({', '.join(list_proposers())})")

    def __call__(self, image_id: Any, rgb: np.ndarray, path: str | os.PathLike | None = None) -> Tensor:
        """Proposals of one image, best first.

        Args:
            image_id: the dataset's id (looked up in a proposal file; the file stem and name are tried next).
            rgb: the image, uint8 [H, W, 3] (used by a method).
        Returns:
            Tensor[N, 4] float boxes (x1, y1, x2, y2) in pixels.
        """
        if self.proposer is not None:
            return self.proposer.propose(rgb)[0]
        keys = [image_id]
        if path is not None:
            keys += [Path(path).stem, str(path), Path(path).name]
        for k in keys:
            if k in self.file:
                return self.file[k][0]
        raise GdetError(f"{self.spec}: no proposals for image {image_id!r}")


# --- proposal workers: a method runs in other processes, ahead of the network -------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(method: str, kwargs: dict) -> None:
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _WORKER["proposer"] = build_proposer(method, **kwargs)


def _propose(path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return _WORKER["proposer"].propose(np.asarray(read_image(path)))[0].numpy(), None
    except GdetError as e:
        return None, str(e)


@contextlib.contextmanager
def _ahead(source: ProposalSource, paths: Sequence[str], workers: int) -> Iterator[Iterator | None]:
    """Proposals of ``paths`` computed in order by ``workers`` processes while the caller scores earlier images
    (None when the source is a file or ``workers`` is 0: the caller computes them itself)."""
    if source.proposer is None or workers <= 0 or not paths:
        yield None
        return
    ctx = mp.get_context("spawn")  # torch and OpenCV thread pools do not survive fork() reliably
    with ctx.Pool(min(workers, len(paths)), initializer=_init_worker,
                  initargs=(source.spec, source.method_kwargs)) as pool:
        yield pool.imap(_propose, paths, chunksize=1)


@torch.no_grad()
def detect_records(model: Detector | EnsembleDetector, records: Sequence[ImageRecord],
                   proposals: ProposalSource | ProposalSet, *, device: torch.device | str | None = None,
                   score_thr: float = EVAL_SCORE_THR, nms_iou: float = DEFAULTS["nms_iou"],
                   max_dets: int = DEFAULTS["max_dets"], max_proposals: int | None = DEFAULTS["max_proposals"],
                   soft_nms: str | None = None, precision: str = "fp32", rank: int = 0, world_size: int = 1,
                   desc: str = "detect", leave: bool = True, workers: int = 0,
                   on_image: Callable[[int, np.ndarray, dict], None] | None = None) -> list[dict[str, Tensor]]:
    """Detect objects in every image of a split (the one loop used by test, demo and training-time evaluation).

    Args:
        model: a detector or an ensemble.
        records: the images (``image_id``, ``path``).
        proposals: a :class:`ProposalSource` or a :class:`~gdet.proposals.ProposalSet` holding every record.
        score_thr, nms_iou, max_dets, soft_nms: post-processing (see :func:`gdet.nms.postprocess`).
        max_proposals: proposals kept per image (best first).
        rank, world_size: detect only ``records[rank::world_size]`` (data-parallel evaluation; gather the
            lists of every rank and interleave them to restore record order).
        workers: processes that run the proposal method on the next images while the network scores the current
            one (a pipeline: images/s is bounded by the slower stage); 0 runs it in this process.
        on_image: called as ``on_image(index, rgb, dets)`` after each image (e.g. to draw it).
    Returns:
        per detected record, ``{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": Tensor[K]}`` on the CPU.
    """
    source = proposals if isinstance(proposals, ProposalSource) else ProposalSource(proposals)
    out = []
    indices = range(rank, len(records), world_size)
    with _ahead(source, [str(records[i].path) for i in indices], workers) as ahead:
        bar = progress(indices, desc=desc, unit="img", leave=leave)
        for i in erase_on_error(bar):
            t0 = time.perf_counter()
            rec = records[i]
            rgb = read_image(rec.path)
            if ahead is None:
                boxes = source(rec.image_id, rgb, rec.path)
            else:
                found, error = next(ahead)
                if error is not None:
                    raise GdetError(error)
                boxes = torch.from_numpy(found)
            dets = detect_image(model, rgb, boxes, score_thr=score_thr, nms_thr=nms_iou, max_dets=max_dets,
                                soft_nms=soft_nms, max_proposals=max_proposals, precision=precision, device=device)
            out.append(dets)
            if on_image is not None:
                on_image(i, rgb, dets)
            bar.set_postfix_str(f"{time.perf_counter() - t0:.2f} s/img, {len(dets['scores'])} dets", refresh=False)
    return out


def image_ids_for(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Image ids of loose image files: the file stem, as VOC and the synthetic benchmark name their images.

    Raises:
        GdetError: two files share a stem (their detections could not be told apart).
    """
    ids = [Path(p).stem for p in paths]
    seen: dict[str, str] = {}
    for i, p in zip(ids, paths):
        if i in seen:
            raise GdetError(f"{p}: same image id {i!r} as {seen[i]} (image ids are file stems and must be unique)")
        seen[i] = str(p)
    return ids


def write_detections(path: str | os.PathLike, image_ids: Sequence[Any], detections: Sequence[dict],
                     class_names: Sequence[str]) -> int:
    """Write a COCO-style result list that ``gdet eval --dets`` reads, atomically (``-``: to stdout).

    Entries are ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``; ``category_id`` is the class
    name, which is unambiguous whatever numeric ids the ground truth uses (``gdet test`` writes the dataset's ids).

    Returns:
        the number of entries written.
    """
    lines = []
    for iid, det in zip(image_ids, detections):
        boxes = torch.as_tensor(det["boxes"]).double().reshape(-1, 4).tolist()
        for (x1, y1, x2, y2), s, lab in zip(boxes, det["scores"].tolist(), det["labels"].tolist()):
            lines.append(json.dumps({"image_id": iid, "category_id": class_names[int(lab)],
                                     "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}))
    text = "[\n" + ",\n".join(lines) + ("\n]\n" if lines else "]\n")
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return len(lines)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return len(lines)


def detections_to_rows(dets: dict, class_names: Sequence[str]) -> list[dict]:
    """Per-image detections as rows ``{"box": [x1, y1, x2, y2], "score", "label", "class"}`` (for tables)."""
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
