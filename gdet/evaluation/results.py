"""Detection result files: a COCO-style JSON list ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.

``image_id`` is the record's ``image_id`` as is (the COCO image id, or the VOC file stem). ``category_id`` is the
dataset's original category id (``DetectionSet.category_ids``: COCO's ids, ``1..C`` for VOC and synthetic data,
i.e. the 1-based index into the class list); on reading, the class name (a string) is accepted too.
``bbox`` is ``[x1, y1, x2 - x1, y2 - y1]`` in gdet's pixel coordinates, written with full float precision so that
a write/read round trip is exact. The file holds one entry per line, images in record order.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch

from gdet.errors import DataError
from gdet.io import atomic_write, load_json
from gdet.structures import ImageRecord


def _category_ids(class_names: Sequence[str], category_ids: Sequence[int] | None) -> list[int]:
    ids = list(range(1, len(class_names) + 1)) if category_ids is None else [int(c) for c in category_ids]
    if len(ids) != len(class_names):
        raise DataError(f"{len(class_names)} class names but {len(ids)} category ids")
    return ids


def write_results(path: str | os.PathLike, records: Sequence[ImageRecord], detections: Sequence[dict],
                  class_names: Sequence[str], category_ids: Sequence[int] | None = None) -> int:
    """Write detections as a COCO-style result file (atomically).

    Args:
        path: output ``.json``.
        records: the images, in order (their ``image_id`` is written).
        detections: per image ``{"boxes": Tensor[N, 4] xyxy, "scores": Tensor[N], "labels": Tensor[N]}``.
        class_names: names of the labels ``0..C-1``.
        category_ids: original id of each class (default ``1..C``); label k is written as ``category_ids[k]``.

    Returns:
        the number of entries written.
    """
    if len(records) != len(detections):
        raise DataError(f"{path}: {len(records)} images but {len(detections)} detection sets")
    cats = np.asarray(_category_ids(class_names, category_ids), dtype=np.int64)
    lines = []
    for rec, det in zip(records, detections):
        boxes = torch.as_tensor(det["boxes"]).detach().cpu().double().reshape(-1, 4).numpy()
        scores = torch.as_tensor(det["scores"]).detach().cpu().double().reshape(-1).tolist()
        labels = torch.as_tensor(det["labels"]).detach().cpu().long().reshape(-1).numpy()
        if labels.size and (labels.min() < 0 or labels.max() >= cats.size):
            raise DataError(f"{path}: image {rec.image_id!r}: label out of range for {cats.size} classes")
        iid = json.dumps(rec.image_id.item() if hasattr(rec.image_id, "item") else rec.image_id)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        for c, b, s in zip(cats[labels].tolist(), xywh, scores):
            lines.append(f'{{"image_id": {iid}, "category_id": {c}, "bbox": [{b[0]!r}, {b[1]!r}, {b[2]!r}, '
                         f'{b[3]!r}], "score": {s!r}}}')
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(lines) + ("\n]\n" if lines else "]\n"))
    return len(lines)


_NUMBER = (int, float)  # exact types: JSON true/false are Python bools, which are ints


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad_entry(path, entries: list, image_index: dict, cat_index: dict) -> DataError:
    """Find the first malformed entry and describe it (slow path, only on error)."""
    for i, e in enumerate(entries):
        where = f"{path}: entry {i + 1}"
        if not isinstance(e, dict):
            return DataError(f"{where}: expected an object, got {type(e).__name__}")
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in e:
                return DataError(f"{where}: missing {key!r}")
        bb = e["bbox"]
        if not (isinstance(bb, list) and len(bb) == 4 and all(type(v) in _NUMBER for v in bb)):
            return DataError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {_short(bb)}")
        if type(e["score"]) not in _NUMBER:
            return DataError(f"{where}: score must be a number, got {_short(e['score'])}")
        if isinstance(e["image_id"], (bool, list, dict, float)) or e["image_id"] is None:
            return DataError(f"{where}: image_id must be an integer or a string, got {_short(e['image_id'])}")
        if str(e["image_id"]) not in image_index:
            return DataError(f"{where}: unknown image_id {_short(e['image_id'])} (not in the ground truth)")
        if not isinstance(e["category_id"], (int, str)) or e["category_id"] not in cat_index:
            return DataError(f"{where}: unknown category_id {_short(e['category_id'])}")
    return DataError(f"{path}: malformed result entries")


def _id_key(image_id) -> str:
    if isinstance(image_id, (bool, list, dict, float)) or image_id is None:
        raise TypeError
    return str(image_id)


def read_results(path: str | os.PathLike, records: Sequence[ImageRecord], class_names: Sequence[str],
                 category_ids: Sequence[int] | None = None) -> list[dict]:
    """Read a result file written by :func:`write_results` (or any COCO-style bbox result list).

    Args:
        path: the ``.json`` result list.
        records: the ground-truth images; every ``image_id`` in the file must be one of theirs (compared as
            strings, so ``7`` and ``"7"`` are the same image).
        class_names: names of the labels ``0..C-1``.
        category_ids: original id of each class (default ``1..C``).

    Returns:
        one detection dict per record, in record order: ``{"boxes": Tensor[N, 4] float64 xyxy,
        "scores": Tensor[N] float64, "labels": Tensor[N] int64}``, entries in file order (images without
        entries get empty tensors).

    Raises:
        DataError: not a list, a malformed entry (a field of the wrong JSON type, e.g. a boolean score; a
            non-finite number; a negative width or height), or an unknown image or category (naming the entry).
    """
    entries = load_json(path)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of detections, got {type(entries).__name__}")
    image_index: dict[str, int] = {}
    for i, r in enumerate(records):
        key = str(r.image_id)
        if key in image_index:
            raise DataError(f"ground truth: image_id {r.image_id!r} appears twice")
        image_index[key] = i
    cats = _category_ids(class_names, category_ids)
    cat_index: dict = {c: k for k, c in enumerate(cats)}
    cat_index.update({n: k for k, n in enumerate(class_names)})
    try:
        img = np.array([image_index[_id_key(e["image_id"])] for e in entries], dtype=np.int64)
        lab = np.array([cat_index[e["category_id"]] for e in entries], dtype=np.int64)
        box = np.array([e["bbox"] for e in entries], dtype=np.float64).reshape(len(entries), 4)
        score = np.array([e["score"] for e in entries], dtype=np.float64).reshape(len(entries))
        # np.array takes true/false as 1/0 and "1" as 1.0: check the JSON types too
        if not (all(type(e["score"]) in _NUMBER for e in entries)
                and all(type(v) in _NUMBER for e in entries for v in e["bbox"])
                and not any(isinstance(e["category_id"], bool) for e in entries)):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise _bad_entry(path, entries, image_index, cat_index) from None
    bad = ~(np.isfinite(box).all(axis=1) & np.isfinite(score))
    if bad.any():
        raise DataError(f"{path}: entry {int(np.flatnonzero(bad)[0]) + 1}: bbox or score is not finite")
    bad = (box[:, 2] < 0) | (box[:, 3] < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: entry {i + 1}: bbox width and height must be >= 0, got {entries[i]['bbox']!r}")
    xyxy = np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1)
    order = np.argsort(img, kind="stable")
    bounds = np.searchsorted(img[order], np.arange(len(records) + 1))
    xyxy, score, lab = torch.from_numpy(xyxy[order]), torch.from_numpy(score[order]), torch.from_numpy(lab[order])
    return [{"boxes": xyxy[s:e], "scores": score[s:e], "labels": lab[s:e]}
            for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
