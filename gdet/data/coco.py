"""COCO instances JSON reader and writer.

COCO ``bbox`` is ``[x, y, w, h]`` in continuous pixel coordinates, so ``(x1, y1, x2, y2) = (x, y, x + w, y + h)``
and back; no half-pixel shift (the same continuous coordinates as gdet, see :mod:`gdet.data.voc`).
Category ids need not be contiguous: they are sorted and mapped to labels ``0..C-1``; the original ids are
kept in ``DetectionSet.category_ids`` (``category_ids[label]``) so results can be mapped back.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from gdet.data.image import image_size
from gdet.data.records import BoxSanitizer, DetectionSet, make_record, object_extra, path_inside, report_fixes
from gdet.errors import DataError
from gdet.io import atomic_path, load_json, save_json


class _Checker:
    """Type checks of COCO fields; each failure is one line naming the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, what: str, value) -> DataError:
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        return DataError(f"{self.path}: {where}: expected {what}, got {text}")

    def need(self, d, key: str, where: str):
        if not isinstance(d, dict):
            raise self.fail(where, "an object", d)
        if key not in d:
            raise DataError(f"{self.path}: {where}: missing {key!r}")
        return d[key]

    def list(self, value, where: str) -> list:
        if not isinstance(value, list):
            raise self.fail(where, "a list", value)
        return value

    def number(self, value, where: str, minimum: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(where, "a finite number", value)
        if minimum is not None and value < minimum:
            raise self.fail(where, f"a number >= {minimum:g}", value)
        return float(value)

    def integer(self, value, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise self.fail(where, "an integer", value)
        return value

    def image_id(self, value, where: str):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise self.fail(where, "an integer or a string", value)
        return value

    def flag(self, value, where: str) -> bool:
        if value in (0, 1) and isinstance(value, (int, bool, float)):
            return bool(value)
        raise self.fail(where, "0 or 1", value)

    def string(self, value, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(where, "a string", value)
        return value


def read_coco(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
              check_images: bool = True, clip: bool = True) -> DetectionSet:
    """Read a COCO instances file.

    Every field is type-checked: a wrong type (``"width": "wide"``, ``"images": null``, a list as an id) or a
    non-finite number raises one :class:`DataError` naming the file and the field, e.g.
    ``ann.json: images[3].width: expected a finite number, got 'wide'``.

    Args:
        json_path: the instances JSON (``images``, ``annotations``, ``categories``).
        image_root: folder that ``file_name`` is relative to (default: the JSON file's folder). A
            ``file_name`` that leads out of it (``../x.jpg``, ``/etc/passwd``) is refused; images kept
            elsewhere are read by naming their folder here.
        check_images: raise :class:`DataError` when an image file is missing.
        clip: clip boxes to the image and drop empty ones, with one :class:`DataWarning` (training);
            ``False`` keeps every box exactly as written, in float64 (evaluation, as pycocotools sees them).

    Returns:
        DetectionSet; records have the COCO image id as ``image_id``, ``extra["file_name"]``, and per-object
        extras ``iscrowd``, ``area`` (+ ``difficult``/``truncated``/``occluded`` when the file has them);
        ``ignore = iscrowd or ignore or difficult``. Images without annotations give empty records.
    """
    json_path = Path(json_path)
    data = load_json(json_path)
    ck = _Checker(json_path)
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: expected a JSON object with images/annotations/categories")
    images = ck.list(ck.need(data, "images", "top level"), "images")
    anns = ck.list(data.get("annotations", []), "annotations")
    cats = ck.list(ck.need(data, "categories", "top level"), "categories")
    image_root = Path(image_root) if image_root is not None else json_path.parent

    names_by_id: dict[int, str] = {}
    for i, c in enumerate(cats):
        cid = ck.integer(ck.need(c, "id", f"categories[{i}]"), f"categories[{i}].id")
        if cid in names_by_id:
            raise DataError(f"{json_path}: categories[{i}]: duplicate category id {cid}")
        name = ck.string(ck.need(c, "name", f"categories[{i}]"), f"categories[{i}].name")
        if name in names_by_id.values():
            other = next(k for k, v in names_by_id.items() if v == name)
            raise DataError(f"{json_path}: categories[{i}]: duplicate category name {name!r} (also id {other}); "
                            "results and class lists name classes, so each name must be unique")
        names_by_id[cid] = name
    cat_ids = sorted(names_by_id)
    label_of = {cid: k for k, cid in enumerate(cat_ids)}
    class_names = [names_by_id[cid] for cid in cat_ids]

    objects: dict = {}
    info: dict = {}
    for i, im in enumerate(images):
        where = f"images[{i}]"
        iid = ck.image_id(ck.need(im, "id", where), f"{where}.id")
        if iid in info:
            raise DataError(f"{json_path}: {where}: duplicate image id {iid!r}")
        file_name = ck.string(ck.need(im, "file_name", where), f"{where}.file_name")
        path = path_inside(image_root, file_name, f"{json_path}: {where}.file_name")
        size = [ck.number(im.get(k) or 0, f"{where}.{k}", minimum=0) for k in ("width", "height")]
        info[iid] = (i, file_name, path, size)
        objects[iid] = []

    fix = BoxSanitizer(clip=clip)
    sizes: dict = {}
    for j, a in enumerate(anns):
        o = _fast_annotation(a, info, label_of)
        if o is None:  # not the common well-formed shape: check field by field (raises naming the field)
            o = _checked_annotation(a, f"annotations[{j}]", ck, info, label_of, cat_ids)
        iid = o.pop("image_id")
        x, y, w, h = o.pop("bbox")
        if iid not in sizes:
            sizes[iid] = _size(info[iid], json_path)
        box = fix([x, y, x + w, y + h], *sizes[iid])
        if box is None:
            continue
        o["box"] = box
        objects[iid].append(o)

    records = []
    for iid, entry in info.items():
        _, file_name, path, _ = entry
        if check_images and not path.is_file():
            raise DataError(f"{json_path}: image {iid}: image not found: {path}")
        width, height = sizes[iid] if iid in sizes else _size(entry, json_path)
        records.append(make_record(iid, str(path), width, height, objects[iid], extra={"file_name": file_name},
                                   exact=not clip))
    dset = DetectionSet(records, class_names, category_ids=cat_ids, format="coco", root=str(json_path),
                        split=json_path.stem)
    dset.stats.update(clipped=fix.clipped, dropped=fix.dropped)
    report_fixes(dset.stats, str(json_path))
    return dset


_NUMBER = (int, float)  # exact types: JSON true/false are Python bools, which are ints
_FLAGS = ("difficult", "truncated", "occluded")


def _fast_annotation(a, info: dict, label_of: dict) -> dict | None:
    """The object of a well-formed annotation, or ``None`` when any field needs a closer look."""
    try:
        iid, cid, bbox = a["image_id"], a["category_id"], a["bbox"]
        if type(iid) not in (int, str) or type(cid) is not int or type(bbox) is not list or len(bbox) != 4 \
                or iid not in info or cid not in label_of:
            return None
        x, y, w, h = bbox
        area = a.get("area", 0.0)
        crowd = a.get("iscrowd", 0)
        if not (type(x) in _NUMBER and type(y) in _NUMBER and type(w) in _NUMBER and type(h) in _NUMBER
                and type(area) in _NUMBER and math.isfinite(x) and math.isfinite(y) and math.isfinite(w)
                and math.isfinite(h) and math.isfinite(area) and area >= 0 and (crowd == 0 or crowd == 1)
                and type(crowd) in (int, bool) and "ignore" not in a and not any(k in a for k in _FLAGS)):
            return None
    except (TypeError, KeyError):
        return None
    return {"image_id": iid, "bbox": (float(x), float(y), float(w), float(h)), "label": label_of[cid],
            "iscrowd": bool(crowd), "area": float(area) if "area" in a else float(w) * float(h),
            "ignore": bool(crowd)}


def _checked_annotation(a, where: str, ck: _Checker, info: dict, label_of: dict, cat_ids: list) -> dict:
    """The object of one annotation, every field type-checked; the first bad field raises :class:`DataError`."""
    iid = ck.image_id(ck.need(a, "image_id", where), f"{where}.image_id")
    if iid not in info:
        raise DataError(f"{ck.path}: {where}: unknown image_id {iid!r}")
    cid = ck.integer(ck.need(a, "category_id", where), f"{where}.category_id")
    if cid not in label_of:
        raise DataError(f"{ck.path}: {where}: unknown category_id {cid} (known: {cat_ids})")
    bbox = ck.need(a, "bbox", where)
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise ck.fail(f"{where}.bbox", "4 numbers [x, y, w, h]", bbox)
    x, y, w, h = (ck.number(v, f"{where}.bbox[{k}]", **({"minimum": 0} if k >= 2 else {}))
                  for k, v in enumerate(bbox))
    crowd = ck.flag(a.get("iscrowd", 0), f"{where}.iscrowd")
    area = ck.number(a["area"], f"{where}.area", minimum=0) if "area" in a else w * h
    flags = {k: ck.flag(a[k], f"{where}.{k}") for k in _FLAGS + ("ignore",) if k in a}
    o = {"image_id": iid, "bbox": (x, y, w, h), "label": label_of[cid], "iscrowd": crowd, "area": area}
    o.update({k: v for k, v in flags.items() if k != "ignore"})
    o["ignore"] = crowd or flags.get("ignore", False) or flags.get("difficult", False)
    return o


def _size(entry: tuple, json_path: Path) -> tuple[int, int]:
    """(width, height) from the ``images`` entry, else from the image file's header."""
    i, _, path, (w, h) = entry
    if w > 0 and h > 0:
        return int(w), int(h)
    if not path.is_file():
        raise DataError(f"{json_path}: images[{i}]: no width/height and image not found: {path}")
    return image_size(path)


def to_coco(dset: DetectionSet, file_names: list[str] | None = None) -> dict:
    """The COCO instances dict of ``dset`` (what :func:`write_coco` saves).

    Image ids are the records' ids when they are all distinct integers, else ``1..N`` in order. Each
    annotation has ``bbox`` ``[x, y, w, h]``, ``area`` (kept from the source, else ``w * h``), ``iscrowd``,
    ``ignore`` (the record's ignore flag) and, where the source had them, ``difficult``/``truncated``/``occluded``.
    """
    recs = dset.records
    ids = [r.image_id for r in recs]
    if not (all(isinstance(i, int) and not isinstance(i, bool) for i in ids) and len(set(ids)) == len(ids)):
        ids = list(range(1, len(recs) + 1))
    if file_names is None:
        file_names = [r.extra.get("file_name") or Path(r.path).name for r in recs]
    images, anns = [], []
    for iid, fname, r in zip(ids, file_names, recs):
        images.append({"id": iid, "file_name": fname, "width": int(r.width), "height": int(r.height)})
        for i in range(len(r)):
            x1, y1, x2, y2 = (float(v) for v in r.boxes[i].tolist())
            w, h = x2 - x1, y2 - y1
            a = {"id": len(anns) + 1, "image_id": iid, "category_id": int(dset.category_ids[int(r.labels[i])]),
                 "bbox": [x1, y1, w, h], "area": float(object_extra(r, "area", i, w * h)),
                 "iscrowd": int(bool(object_extra(r, "iscrowd", i, False))), "ignore": int(bool(r.ignore[i]))}
            for k in ("difficult", "truncated", "occluded"):
                v = object_extra(r, k, i)
                if v is not None:
                    a[k] = int(bool(v))
            anns.append(a)
    cats = [{"id": int(cid), "name": n, "supercategory": "none"}
            for cid, n in zip(dset.category_ids, dset.class_names)]
    info = {"description": f"written by gdet ({dset.format or 'unknown'} source, split {dset.split})"}
    return {"info": info, "images": images, "annotations": anns, "categories": cats}


def write_coco(dset: DetectionSet, json_path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
               ) -> Path:
    """Write ``dset`` as a COCO instances file; the inverse of :func:`read_coco`.

    Args:
        dset: the dataset.
        json_path: output JSON.
        image_dir: if given, images are copied there; ``file_name`` is then relative to the JSON's folder.
            Without it, ``file_name`` is the path of the existing image: relative to the JSON's folder when
            it lies inside it, else absolute (read such a file back with ``read_coco(..., image_root=...)``).

    Returns:
        ``json_path``.
    """
    json_path = Path(json_path)
    base = json_path.parent.resolve()
    file_names = []
    for r in dset.records:
        src = Path(r.path)
        if image_dir is not None:
            dst = Path(image_dir) / src.name
            if not (dst.exists() and dst.resolve() == src.resolve()):
                if not src.is_file():
                    raise DataError(f"{src}: image not found")
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
            src = dst
        full = src.resolve()
        # inside the JSON's folder: a relative name; elsewhere an absolute one, read back with image_root
        file_names.append(os.path.relpath(full, base) if full.is_relative_to(base) else str(full))
    if len(set(file_names)) != len(file_names):
        raise DataError(f"{json_path}: two images would share one file_name (same name in different folders)")
    save_json(to_coco(dset, file_names), json_path, indent=None)
    return json_path
