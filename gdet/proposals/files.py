"""Proposal files: one ``.npz`` per dataset split holding image ids, boxes and scores.

Format (``numpy.savez_compressed``, no pickled objects, readable with ``np.load`` alone):

=============  ===================  ====================================================================
key            dtype / shape        meaning
=============  ===================  ====================================================================
``format``     str (0-d)            ``"gdet-proposals"``
``version``    int64 (0-d)          1
``image_ids``  str ``[I]``          image ids, as strings (``ImageRecord.image_id``)
``id_type``    str (0-d)            ``"int"`` if every id was an int (COCO), else ``"str"``; ids come back so
``offsets``    int64 ``[I + 1]``    image ``i`` owns rows ``offsets[i]:offsets[i + 1]`` of boxes and scores
``boxes``      float32 ``[M, 4]``   (x1, y1, x2, y2) pixels of the original image, best first per image
``scores``     float32 ``[M]``      the method's scores, non-increasing within each image
``sizes``      int64 ``[I, 2]``     (width, height) of each image, -1 when unknown
``meta``       str (0-d)            JSON: ``{"method": ..., <the method's settings>, "data": ..., ...}``
=============  ===================  ====================================================================

While ``gdet proposals compute`` runs, finished images are kept as ``<out>.parts/<hash>.npz`` (each written
atomically) beside ``<out>.parts/config.json``; a rerun skips them, and the directory is merged into ``<out>``
(atomically) and removed at the end.
"""
from __future__ import annotations

import codecs
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from gdet.errors import DataError
from gdet.io import atomic_path

FORMAT = "gdet-proposals"
VERSION = 1


class ProposalSet:
    """Proposals of a set of images, looked up by image id.

    ``props[image_id] -> (boxes Tensor[N, 4], scores Tensor[N])``; ``len(props)``, ``image_ids``, ``in``,
    ``size(image_id) -> (width, height)``, ``meta`` (the method's settings).
    """

    def __init__(self, image_ids: Sequence, offsets: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                 sizes: np.ndarray | None = None, meta: dict | None = None):
        self.image_ids = list(image_ids)
        self._index = {i: k for k, i in enumerate(self.image_ids)}
        if len(self._index) != len(self.image_ids):
            raise ValueError("duplicate image ids in a proposal set")
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        n = len(self.image_ids)
        self.sizes = (np.full((n, 2), -1, dtype=np.int64) if sizes is None
                      else np.asarray(sizes, dtype=np.int64).reshape(n, 2))
        self.meta = dict(meta or {})

    @classmethod
    def from_lists(cls, image_ids: Sequence, boxes: Sequence, scores: Sequence,
                   sizes: Sequence | None = None, meta: dict | None = None) -> "ProposalSet":
        """Build from per-image ``boxes[i] (Tensor|ndarray [N_i, 4])`` and ``scores[i] ([N_i])``."""
        if not (len(image_ids) == len(boxes) == len(scores)):
            raise ValueError(f"{len(image_ids)} ids, {len(boxes)} box arrays, {len(scores)} score arrays")
        b = [_np(x).reshape(-1, 4) for x in boxes]
        s = [_np(x).reshape(-1) for x in scores]
        for i, (bb, ss) in enumerate(zip(b, s)):
            if bb.shape[0] != ss.shape[0]:
                raise ValueError(f"image {image_ids[i]}: {bb.shape[0]} boxes but {ss.shape[0]} scores")
        offsets = np.zeros(len(b) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([x.shape[0] for x in b])
        cat_b = np.concatenate(b) if b else np.zeros((0, 4), np.float32)
        cat_s = np.concatenate(s) if s else np.zeros((0,), np.float32)
        return cls(image_ids, offsets, cat_b, cat_s, sizes, meta)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id) -> bool:
        return image_id in self._index

    def __iter__(self) -> Iterator:
        return iter(self.image_ids)

    def __getitem__(self, image_id) -> tuple[Tensor, Tensor]:
        k = self._lookup(image_id)
        a, b = self.offsets[k], self.offsets[k + 1]
        return torch.from_numpy(self.boxes[a:b].copy()), torch.from_numpy(self.scores[a:b].copy())

    def size(self, image_id) -> tuple[int, int]:
        w, h = self.sizes[self._lookup(image_id)]
        return int(w), int(h)

    def num_boxes(self) -> np.ndarray:
        """Boxes per image, ``int64 [I]``."""
        return np.diff(self.offsets)

    def _lookup(self, image_id) -> int:
        if image_id in self._index:
            return self._index[image_id]
        # Tolerate "12" vs 12 so that files work across VOC/COCO readers.
        alt = str(image_id) if not isinstance(image_id, str) else (int(image_id) if image_id.isdigit() else None)
        if alt is not None and alt in self._index:
            return self._index[alt]
        raise KeyError(f"image {image_id!r} has no proposals in this set ({len(self)} images)")

    def __repr__(self) -> str:
        return (f"ProposalSet({len(self)} images, {self.boxes.shape[0]} boxes, "
                f"method={self.meta.get('method', '?')!r})")


def _np(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def save_proposals(path: str | os.PathLike, proposals: ProposalSet) -> None:
    """Write a :class:`ProposalSet` to ``path`` (``.npz``) atomically, in the format of this module."""
    ids = proposals.image_ids
    id_type = "int" if ids and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids) \
        else "str"
    path = Path(path)
    if path.suffix != ".npz":
        raise DataError(f"{path}: proposal files end in .npz")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append .npz to the temp name
            np.savez_compressed(
                f, format=np.array(FORMAT), version=np.array(VERSION, dtype=np.int64),
                image_ids=np.array([str(i) for i in ids], dtype=str).reshape(-1), id_type=np.array(id_type),
                offsets=proposals.offsets, boxes=proposals.boxes, scores=proposals.scores,
                sizes=proposals.sizes, meta=np.array(json.dumps(proposals.meta, sort_keys=True)))


def _kind(head: bytes) -> str:
    """What a file that is not a zip archive is, from its first bytes (for the error message)."""
    if head.startswith(b"\x93NUMPY"):
        return "a .npy array"
    if head[:1] == b"\x80":
        return "a Python pickle"
    if not head:
        return "an empty file"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at the end is not an error
    except UnicodeDecodeError:
        return "a binary file"
    return "a text file" if b"\x00" not in head else "a binary file"


def load_proposals(path: str | os.PathLike) -> ProposalSet:
    """Read a proposal file.

    Raises:
        DataError: naming the file: missing, corrupt or foreign; no or a newer ``version``; arrays of the wrong
            dtype or shape (e.g. 3 boxes with 1 score); offsets that do not cover the boxes; repeated image ids;
            non-finite boxes or scores; ``meta`` that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: proposal file not found")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head.startswith(b"PK"):  # every .npz is a zip archive
        raise DataError(f"{path}: not a proposal file ({_kind(head)}, not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise DataError(f"{path}: not a readable proposal file ({str(e).splitlines()[0][:100] if str(e) else e!r})"
                        ) from None
    fmt = data.get("format")
    if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != FORMAT:
        raise DataError(f"{path}: not a gdet proposal file (no format={FORMAT!r} key)")
    version = data.get("version")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        raise DataError(f"{path}: proposal file has no integer 'version'")
    if int(version) > VERSION or int(version) < 1:
        raise DataError(f"{path}: proposal file version {int(version)} is not one this gdet reads (1..{VERSION})")
    missing = [k for k in ("image_ids", "offsets", "boxes", "scores") if k not in data]
    if missing:
        raise DataError(f"{path}: proposal file lacks {', '.join(missing)}")
    image_ids, offsets, boxes, scores = (data[k] for k in ("image_ids", "offsets", "boxes", "scores"))
    if image_ids.ndim != 1 or (image_ids.size and image_ids.dtype.kind != "U"):
        raise DataError(f"{path}: image_ids must be a 1-d array of strings, got {image_ids.dtype} {image_ids.shape}")
    if boxes.dtype.kind != "f" or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"{path}: boxes must be a float array [M, 4], got {boxes.dtype} {boxes.shape}")
    if scores.dtype.kind != "f" or scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise DataError(f"{path}: scores must be a float array [M] with one score per box, got {scores.dtype} "
                        f"{scores.shape} for {boxes.shape[0]} boxes")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise DataError(f"{path}: boxes or scores contain NaN or infinite values")
    id_type = str(data.get("id_type", "str"))
    ids: list[Any] = [str(i) for i in image_ids.tolist()]
    if id_type == "int":
        try:
            ids = [int(i) for i in ids]
        except ValueError:
            raise DataError(f"{path}: id_type is 'int' but an image id is not an integer") from None
    elif id_type != "str":
        raise DataError(f"{path}: id_type must be 'int' or 'str', got {id_type[:40]!r}")
    if len(set(ids)) != len(ids):
        dup = next(i for k, i in enumerate(ids) if i in ids[:k])
        raise DataError(f"{path}: image id {dup!r} appears more than once")
    if offsets.dtype.kind not in "iu" or offsets.ndim != 1 or offsets.shape[0] != len(ids) + 1 \
            or offsets[0] != 0 or offsets[-1] != boxes.shape[0] or np.any(np.diff(offsets) < 0):
        raise DataError(f"{path}: inconsistent offsets ({offsets.shape[0]} for {len(ids)} images, "
                        f"{boxes.shape[0]} boxes)")
    sizes = data.get("sizes")
    if sizes is not None and (sizes.dtype.kind not in "iu" or sizes.shape != (len(ids), 2)):
        raise DataError(f"{path}: sizes must be an integer array [{len(ids)}, 2], got {sizes.dtype} {sizes.shape}")
    meta: Any = {}
    if "meta" in data:
        m = data["meta"]
        try:
            meta = json.loads(str(m)) if m.shape == () and m.dtype.kind == "U" else None
        except (json.JSONDecodeError, RecursionError):
            meta = None
        if not isinstance(meta, dict):
            raise DataError(f"{path}: meta must be a JSON object in a string")
    return ProposalSet(ids, offsets, boxes, scores, sizes, meta)
