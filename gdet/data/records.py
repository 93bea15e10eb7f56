"""`DetectionSet` (records + class names), the box sanitising and the input checks shared by every reader."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gdet.errors import DataError
from gdet.structures import ImageRecord

# Per-object keys of ``ImageRecord.extra`` (lists parallel to ``boxes``) that readers fill and writers keep.
#   truncated (bool)  VOC <truncated>, synthetic border truncation
#   occluded (bool)   VOC 2010+ <occluded>, synthetic occlusion
#   difficult (bool)  VOC <difficult> / synthetic difficult flag (``ignore`` is difficult OR iscrowd)
#   iscrowd (bool)    COCO iscrowd
#   area (float)      COCO area (segment area; not representable in VOC XML)
#   visible (float)   synthetic: visible fraction of the object (0..1)
PER_OBJECT_KEYS = ("truncated", "occluded", "difficult", "iscrowd", "area", "visible")


class DataWarning(UserWarning):
    """Boxes that were clipped or dropped while reading a dataset (one summary warning per read)."""


@dataclass
class DetectionSet:
    """A detection dataset: one :class:`~gdet.structures.ImageRecord` per image plus its class names.

    Attributes:
        records: one record per image, in file order (VOC split file order / COCO ``images`` order).
        class_names: names of the contiguous labels ``0..C-1``.
        category_ids: original dataset id of each class (COCO ``category_id``; ``1..C`` for VOC), so that
            writers and evaluators can map a contiguous label ``k`` back to ``category_ids[k]``.
        format: ``"voc"``, ``"coco"`` or ``"synth"`` (where the records came from).
        root: dataset root (VOC) or annotation file (COCO).
        split: the split name, if any.
        stats: reading statistics: ``images``, ``objects``, ``ignored``, ``clipped``, ``dropped``.
    """

    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int] | None = None
    format: str = ""
    root: str = ""
    split: str | None = None
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = list(self.class_names)
        if self.category_ids is None:
            self.category_ids = list(range(1, len(self.class_names) + 1))
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names but {len(self.category_ids)} category ids")
        if not self.stats:
            self.stats = count_stats(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i: int) -> ImageRecord:
        return self.records[i]

    def summary(self) -> str:
        """One line: images, objects, ignored, and clipped/dropped counts if any."""
        s = self.stats
        where = f"{self.root}" + (f" [{self.split}]" if self.split else "")
        line = (f"{where}: {s.get('images', len(self))} images, {s.get('objects', 0)} objects "
                f"({s.get('ignored', 0)} ignored), {self.num_classes} classes")
        fixes = _fix_text(s)
        return line + (f"; {fixes}" if fixes else "")


def count_stats(records: list[ImageRecord]) -> dict:
    return {
        "images": len(records),
        "objects": int(sum(len(r) for r in records)),
        "ignored": int(sum(int(r.ignore.sum()) for r in records)),
        "clipped": 0,
        "dropped": 0,
    }


def _fix_text(stats: dict) -> str:
    parts = []
    if stats.get("clipped"):
        parts.append(f"clipped {stats['clipped']} boxes partly outside their image")
    if stats.get("dropped"):
        parts.append(f"dropped {stats['dropped']} degenerate boxes (empty after clipping)")
    return ", ".join(parts)


def report_fixes(stats: dict, where: str) -> None:
    """Warn once (one line, :class:`DataWarning`) if any box was clipped or dropped while reading ``where``."""
    text = _fix_text(stats)
    if text:
        warnings.warn(f"{where}: {text}", DataWarning, stacklevel=3)


class BoxSanitizer:
    """Clips boxes to their image and drops the degenerate ones, counting both.

    A box is clipped to ``[0, width] x [0, height]``; it is dropped if it is not finite or has no area
    after clipping (``x2 <= x1`` or ``y2 <= y1``). With ``clip=False`` every box is kept exactly as read
    (what evaluation needs: the official tools score against the annotations as they are).
    """

    def __init__(self, clip: bool = True) -> None:
        self.clip = clip
        self.clipped = 0
        self.dropped = 0

    def __call__(self, box: list[float], width: int, height: int) -> list[float] | None:
        x1, y1, x2, y2 = box
        if not self.clip:
            return list(box)
        if not all(math.isfinite(v) for v in box):
            self.dropped += 1
            return None
        c = [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
             min(max(y2, 0.0), height)]
        if c[2] <= c[0] or c[3] <= c[1]:
            self.dropped += 1
            return None
        if c != [x1, y1, x2, y2]:
            self.clipped += 1
        return c


def make_record(image_id, path: str, width: int, height: int, objects: list[dict], extra: dict | None = None,
                exact: bool = False) -> ImageRecord:
    """Build an :class:`ImageRecord` from per-object dicts ``{"box", "label", "ignore", <PER_OBJECT_KEYS>...}``.

    Per-object extras present on any object become lists in ``record.extra`` (missing values: False / 0).
    With ``exact`` the boxes stay float64 (the annotation's numbers, for evaluation) instead of float32.
    """
    extra = dict(extra or {})
    keys = [k for k in PER_OBJECT_KEYS if any(k in o for o in objects)]
    for k in keys:
        default = 0.0 if k in ("area", "visible") else False
        extra[k] = [o.get(k, default) for o in objects]
    record = ImageRecord(
        image_id=image_id, path=path, width=int(width), height=int(height),
        boxes=torch.tensor([o["box"] for o in objects], dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor([o["label"] for o in objects], dtype=torch.int64),
        ignore=torch.tensor([bool(o.get("ignore", False)) for o in objects], dtype=torch.bool),
        extra=extra,
    )
    if exact:  # ImageRecord stores float32; evaluation must see the file's float64 numbers
        record.boxes = torch.tensor([o["box"] for o in objects], dtype=torch.float64).reshape(-1, 4)
    return record


def check_split_name(split: str, key: str = "split") -> str:
    """``split`` if it is a plain name (``train``, ``val2017``); a path (``/``, ``\\``, ``..``) is refused, so a
    split names a file or folder inside the dataset root and nothing beside it."""
    if not isinstance(split, str) or not split.strip() or "/" in split or "\\" in split or split.strip(".") == "" \
            or "\x00" in split:
        raise DataError(f"{key} {split!r}: a split is a name such as train or val, not a path")
    return split


def path_inside(root: str | os.PathLike, name: str, where: str) -> Path:
    """``root / name`` for a file name read from an annotation, refusing any name that leads out of ``root``.

    The check is lexical (``..`` steps and absolute names are resolved as text, symbolic links are not
    followed): a dataset whose ``JPEGImages`` is a link to another disk is usual, while a hostile annotation
    can only supply a name. An absolute name is accepted when it lies inside ``root``.

    Args:
        root: the folder the name is relative to.
        name: the file name from the annotation.
        where: ``"<annotation file>: <field>"`` for the error message.

    Raises:
        DataError: naming ``where`` and the bad name.
    """
    root = Path(root)
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise DataError(f"{where}: expected a file name, got {name!r}")
    base = Path(os.path.abspath(root))
    full = Path(os.path.abspath(base / name))
    if full == base or not full.is_relative_to(base):
        raise DataError(f"{where}: file name {name!r} points outside the image folder {root} (if the images "
                        "really live elsewhere, name their folder with image_root / --image-root)")
    return full if os.path.isabs(name) else root / name


def object_extra(record: ImageRecord, key: str, i: int, default=None):
    """Per-object extra ``key`` of object ``i`` (``default`` when the record does not carry it)."""
    values = record.extra.get(key)
    if isinstance(values, (list, tuple)) and len(values) == len(record):
        return values[i]
    return default
