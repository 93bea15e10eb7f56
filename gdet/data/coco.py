"""COCO instances JSON reader and writer.

COCO ``bbox`` is ``[x, y, w, h]`` in continuous pixel coordinates, so ``(x1, y1, x2, y2) = (x, y, x + w, y + h)``
and back; no half-pixel shift (the same continuous coordinates as gdet, see :mod:`gdet.data.voc`).
Category ids need not be contiguous: they are sorted and mapped to labels ``0..C-1``; the original ids are
kept in ``DetectionSet.category_ids`` (``category_ids[label]``) so results can be mapped back.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from gdet.data.dataset import BoxSanitizer, DetectionSet, image_size, make_record, object_extra, report_fixes
from gdet.errors import DataError
from gdet.io import load_json, save_json


def _need(d, key, path, where):
    if not isinstance(d, dict) or key not in d:
        raise DataError(f"{path}: {where}: missing {key!r}")
    return d[key]


def read_coco(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
              check_images: bool = True) -> DetectionSet:
    """Read a COCO instances file.

    Args:
        json_path: the instances JSON (``images``, ``annotations``, ``categories``).
        image_root: folder that ``file_name`` is relative to (default: the JSON file's folder).
        check_images: raise :class:`DataError` when an image file is missing.

    Returns:
        DetectionSet; records have the COCO image id as ``image_id``, ``extra["file_name"]``, and per-object
        extras ``iscrowd``, ``area`` (+ ``difficult``/``truncated``/``occluded`` when the file has them);
        ``ignore = iscrowd or ignore or difficult``. Images without annotations give empty records.
    """
    json_path = Path(json_path)
    data = load_json(json_path)
    if not isinstance(data, dict):
        raise DataError(f"{json_path}: expected a JSON object with images/annotations/categories")
    images = _need(data, "images", json_path, "top level")
    anns = data.get("annotations", [])
    cats = _need(data, "categories", json_path, "top level")
    image_root = Path(image_root) if image_root is not None else json_path.parent

    cat_ids = sorted(int(_need(c, "id", json_path, f"categories[{i}]")) for i, c in enumerate(cats))
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{json_path}: duplicate category ids")
    names_by_id = {int(c["id"]): str(_need(c, "name", json_path, f"categories[{i}]")) for i, c in enumerate(cats)}
    label_of = {cid: k for k, cid in enumerate(cat_ids)}
    class_names = [names_by_id[cid] for cid in cat_ids]

    objects: dict[int, list[dict]] = {}
    order: list = []
    info = {}
    for i, im in enumerate(images):
        iid = _need(im, "id", json_path, f"images[{i}]")
        if iid in info:
            raise DataError(f"{json_path}: images[{i}]: duplicate image id {iid}")
        info[iid] = im
        order.append(iid)
        objects[iid] = []

    fix = BoxSanitizer()
    for j, a in enumerate(anns):
        where = f"annotations[{j}]"
        iid = _need(a, "image_id", json_path, where)
        if iid not in info:
            raise DataError(f"{json_path}: {where}: unknown image_id {iid}")
        cid = _need(a, "category_id", json_path, where)
        if cid not in label_of:
            raise DataError(f"{json_path}: {where}: unknown category_id {cid} (known: {cat_ids})")
        bbox = _need(a, "bbox", json_path, where)
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DataError(f"{json_path}: {where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        im = info[iid]
        width, height = _size(im, image_root, json_path)
        box = fix([x, y, x + w, y + h], width, height)
        if box is None:
            continue
        crowd = bool(a.get("iscrowd", 0))
        o = {"box": box, "label": label_of[cid], "iscrowd": crowd,
             "area": float(a["area"]) if "area" in a else w * h}
        for k in ("difficult", "truncated", "occluded"):
            if k in a:
                o[k] = bool(a[k])
        o["ignore"] = crowd or bool(a.get("ignore", 0)) or o.get("difficult", False)
        objects[iid].append(o)

    records = []
    for iid in order:
        im = info[iid]
        file_name = str(_need(im, "file_name", json_path, f"image {iid}"))
        path = image_root / file_name
        if check_images and not path.is_file():
            raise DataError(f"{json_path}: image {iid}: image not found: {path}")
        width, height = _size(im, image_root, json_path)
        records.append(make_record(iid, str(path), width, height, objects[iid], extra={"file_name": file_name}))
    dset = DetectionSet(records, class_names, category_ids=cat_ids, format="coco", root=str(json_path),
                        split=json_path.stem)
    dset.stats.update(clipped=fix.clipped, dropped=fix.dropped)
    report_fixes(dset.stats, str(json_path))
    return dset


def _size(im: dict, image_root: Path, json_path: Path) -> tuple[int, int]:
    if "_size" not in im:
        w, h = int(im.get("width") or 0), int(im.get("height") or 0)
        if w <= 0 or h <= 0:
            if "file_name" not in im:
                raise DataError(f"{json_path}: image {im.get('id')}: missing 'file_name'")
            w, h = image_size(image_root / im["file_name"])
        im["_size"] = (w, h)
    return im["_size"]


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
            Without it, ``file_name`` is the path of the existing image relative to the JSON's folder.

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
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            src = dst
        file_names.append(os.path.relpath(src.resolve(), base))
    if len(set(file_names)) != len(file_names):
        raise DataError(f"{json_path}: two images would share one file_name (same name in different folders)")
    save_json(to_coco(dset, file_names), json_path, indent=None)
    return json_path
