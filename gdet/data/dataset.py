"""Reading any detection dataset: :func:`load_detection_set` picks the VOC or COCO reader from the path."""
from __future__ import annotations

import os
from pathlib import Path

from gdet.data.coco import read_coco
from gdet.data.image import image_size
from gdet.data.records import (
    PER_OBJECT_KEYS,
    BoxSanitizer,
    DataWarning,
    DetectionSet,
    check_split_name,
    count_stats,
    make_record,
    object_extra,
    path_inside,
    report_fixes,
)
from gdet.data.voc import read_voc
from gdet.errors import DataError

__all__ = ["PER_OBJECT_KEYS", "BoxSanitizer", "DataWarning", "DetectionSet", "check_split_name", "count_stats",
           "image_size", "load_detection_set", "make_record", "object_extra", "path_inside", "report_fixes"]


def load_detection_set(path: str | os.PathLike, split: str | None = "val", class_names: list[str] | None = None,
                       check_images: bool = True, image_root: str | os.PathLike | None = None,
                       clip: bool = True) -> DetectionSet:
    """Read a detection dataset, detecting its format.

    Args:
        path: a VOC root (a folder with ``Annotations/``), a COCO instances ``.json`` file, or a folder holding
            ``<split>.json`` (the layout written by ``gdet data synth`` / ``gdet data convert --to coco``).
        split: the split to read (VOC ``ImageSets/Main/<split>.txt``, or ``<split>.json``); ignored for a
            ``.json`` path. ``None``: ``"val"`` for VOC, the only ``.json`` of a COCO folder.
        class_names: VOC only: the class list (default: ``classes.txt`` in the root, else the 20 VOC classes).
        check_images: raise :class:`DataError` if an image file is missing.
        image_root: COCO only: the folder ``file_name`` is relative to (default: the JSON file's folder);
            every image must lie inside it.
        clip: clip boxes to their image and drop empty ones (for training); ``False`` keeps the annotations
            exactly as written, float64 (for evaluation, as the official tools see them).

    Returns:
        DetectionSet
    """
    p = Path(path)
    if split is not None:
        check_split_name(split)
    if p.suffix.lower() == ".json":
        return read_coco(p, image_root=image_root, check_images=check_images, clip=clip)
    if not p.exists():
        raise DataError(f"{p}: dataset not found")
    if p.is_dir():
        if (p / "Annotations").is_dir():
            return read_voc(p, split=split or "val", class_names=class_names, check_images=check_images,
                            clip=clip)
        jsons = sorted(x.name for x in p.glob("*.json") if x.name != "synth.json")
        if split is None and len(jsons) == 1:
            split = Path(jsons[0]).stem
        if (p / f"{split}.json").is_file():
            return read_coco(p / f"{split}.json", image_root=image_root, check_images=check_images,
                             clip=clip)
        hint = f" (found {', '.join(jsons)})" if jsons else ""
        raise DataError(f"{p}: not a dataset: no Annotations/ folder (VOC) and no {split}.json (COCO){hint}")
    raise DataError(f"{p}: unknown dataset format (expected a VOC folder or a COCO .json file)")
