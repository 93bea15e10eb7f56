"""PASCAL VOC reader and writer (Annotations/*.xml, ImageSets/Main/<split>.txt, JPEGImages/).

Box convention: VOC XML stores 1-based, inclusive pixel indices (``xmin=1`` is the first pixel column,
``xmax=W`` the last). gdet boxes are continuous pixel coordinates where pixel ``i`` (0-based) covers
``[i, i+1)``, so::

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax      (reading)
    xmin = x1 + 1,  ymin = y1 + 1,  xmax = x2,  ymax = y2      (writing, the exact inverse)

A whole-image box is ``(0, 0, W, H)`` and a box's width is ``x2 - x1 = xmax - xmin + 1``, as in the VOC
devkit. Non-integer coordinates are written as floats, so a read/write round trip is exact.
"""
from __future__ import annotations

import math
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from gdet.data.image import IMAGE_EXTENSIONS, image_size
from gdet.data.records import BoxSanitizer, DetectionSet, make_record, object_extra, path_inside, report_fixes
from gdet.errors import DataError
from gdet.io import atomic_path, atomic_write

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_splits(root: str | os.PathLike) -> list[str]:
    """Split names available in ``root/ImageSets/Main`` (per-class files like ``cat_train.txt`` excluded)."""
    main = Path(root) / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    return sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)


def read_class_file(path: str | os.PathLike) -> list[str]:
    """One class name per line (blank lines and ``#`` comments skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate class names")
    return names


def _text(node: ET.Element, tag: str, xml_path: Path, where: str, default: str | None = None) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if default is not None:
            return default
        raise DataError(f"{xml_path}: {where}missing <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, xml_path: Path, where: str, default: str | None = None) -> float:
    text = _text(node, tag, xml_path, where, default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise DataError(f"{xml_path}: {where}<{tag}> is not a finite number: {shown!r}")
    return value


def _size_value(node: ET.Element, tag: str, xml_path: Path) -> int:
    value = _number(node, tag, xml_path, "<size>: ", default="0")
    if value < 0 or not value.is_integer():
        raise DataError(f"{xml_path}: <size>: <{tag}> must be a whole number of pixels, got {value:g}")
    return int(value)


def _flag(node: ET.Element, tag: str, xml_path: Path, where: str) -> bool:
    value = _number(node, tag, xml_path, where, default="0")
    if value not in (0.0, 1.0):
        raise DataError(f"{xml_path}: {where}<{tag}> must be 0 or 1, got {value:g}")
    return bool(value)


def parse_voc_xml(xml_path: str | os.PathLike) -> dict:
    """Parse one VOC annotation file.

    Returns:
        ``{"filename", "width", "height", "objects": [{"name", "box" (VOC 1-based xmin, ymin, xmax, ymax),
        "difficult", "truncated", ["occluded", "iscrowd"]}]}``; width/height are 0 when ``<size>`` is absent.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise DataError(f"{xml_path}: annotation file not found")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        msg = str(e).split(":")[0]
        raise DataError(f"{xml_path}: line {line}, column {col + 1}: malformed XML: {msg}") from None
    if root.tag != "annotation":
        raise DataError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    width = height = 0
    if size is not None:
        width = _size_value(size, "width", xml_path)
        height = _size_value(size, "height", xml_path)
    out = {"filename": _text(root, "filename", xml_path, "", default=""), "width": width, "height": height,
           "objects": []}
    for i, obj in enumerate(root.findall("object")):
        where = f"object {i + 1}: "
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{xml_path}: {where}missing <bndbox>")
        o = {
            "name": _text(obj, "name", xml_path, where),
            "box": [_number(bb, t, xml_path, where) for t in ("xmin", "ymin", "xmax", "ymax")],
            "difficult": _flag(obj, "difficult", xml_path, where),
            "truncated": _flag(obj, "truncated", xml_path, where),
        }
        for tag in ("occluded", "iscrowd"):
            if obj.find(tag) is not None:
                o[tag] = _flag(obj, tag, xml_path, where)
        out["objects"].append(o)
    return out


def read_split_ids(split_file: Path) -> list[str]:
    """Image ids of a split file, one a line, read whole (ids may contain spaces; surrounding blanks dropped).

    A per-class file (``<class>_<split>.txt``, stem with ``_``) holds ``<id> <flag>`` lines (flag -1, 0 or 1);
    its ids are the text before the flag. An id that would lead out of ``Annotations/`` (a ``/``, ``\\``, or
    ``..``) is refused.
    """
    per_class = "_" in split_file.stem
    ids = []
    try:
        text = split_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{split_file}: not a text file of image ids (not UTF-8)") from None
    for n, line in enumerate(text.splitlines(), 1):
        image_id = line.strip()
        if not image_id:
            continue
        if per_class:
            parts = image_id.rsplit(None, 1)
            if len(parts) == 2 and parts[1] in ("-1", "0", "1"):
                image_id = parts[0]
        if "/" in image_id or "\\" in image_id or image_id in (".", "..") or "\x00" in image_id:
            raise DataError(f"{split_file}: line {n}: image id {image_id!r} is not a plain file name")
        ids.append(image_id)
    return ids


def _find_image(root: Path, image_id: str, filename: str, xml_path: Path) -> Path:
    """The image of an annotation: ``JPEGImages/<filename>``, else ``JPEGImages/<id or filename stem>.<ext>``
    for the usual extensions (a VOC-style root whose images are .png, .jpeg, .tif, ...)."""
    folder = root / "JPEGImages"
    first = path_inside(folder, filename, f"{xml_path}: <filename>") if filename else None
    if first is not None and first.is_file():
        return first
    stems = [image_id] + ([Path(filename).stem] if filename and Path(filename).stem != image_id else [])
    for stem in stems:
        for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return first if first is not None else folder / f"{image_id}.jpg"


def read_voc(root: str | os.PathLike, split: str = "val", class_names: list[str] | None = None,
             check_images: bool = True, clip: bool = True) -> DetectionSet:
    """Read a PASCAL VOC split.

    Args:
        root: folder with ``Annotations/``, ``ImageSets/Main/<split>.txt`` and ``JPEGImages/``.
        split: split name.
        class_names: label order; default ``root/classes.txt`` if present, else the 20 VOC classes if every
            name is one of them, else the sorted names found in the split. With an explicit list (or
            ``classes.txt``) an unknown name is an error.
        check_images: raise :class:`DataError` when an image file is missing.
        clip: clip boxes partly outside the image and drop degenerate ones, with one :class:`DataWarning`
            (training); ``False`` keeps every box as written, in float64 (evaluation, as the devkit does).

    Returns:
        DetectionSet whose records have ``image_id`` = the line of the split file, ``ignore`` = ``difficult``
        (or the gdet ``<iscrowd>`` extension tag) and per-object extras ``difficult``, ``truncated``
        (+ ``occluded``). The image is ``JPEGImages/<filename>``, else ``JPEGImages/<id>`` with any of
        :data:`~gdet.data.image.IMAGE_EXTENSIONS`; a ``<filename>`` leading out of ``JPEGImages`` is refused.
    """
    root = Path(root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not (root / "Annotations").is_dir():
        raise DataError(f"{root}: not a VOC dataset (no Annotations/ folder)")
    if not split_file.is_file():
        known = voc_splits(root)
        raise DataError(f"{split_file}: split {split!r} not found (available: {', '.join(known) or 'none'})")
    ids = read_split_ids(split_file)
    parsed = [parse_voc_xml(root / "Annotations" / f"{i}.xml") for i in ids]

    strict = class_names is not None or (root / "classes.txt").is_file()
    if class_names is None and (root / "classes.txt").is_file():
        class_names = read_class_file(root / "classes.txt")
    names_found = {o["name"] for p in parsed for o in p["objects"]}
    if class_names is None:
        class_names = list(VOC_CLASSES) if names_found <= set(VOC_CLASSES) else sorted(names_found)
    index = {n: k for k, n in enumerate(class_names)}

    fix = BoxSanitizer(clip=clip)
    records = []
    for image_id, p in zip(ids, parsed):
        xml_path = root / "Annotations" / f"{image_id}.xml"
        image_path = _find_image(root, image_id, p["filename"], xml_path)
        if check_images and not image_path.is_file():
            raise DataError(f"{xml_path}: image not found: {image_path}")
        width, height = p["width"], p["height"]
        if width <= 0 or height <= 0:
            if not image_path.is_file():
                raise DataError(f"{xml_path}: no <size> and image not found: {image_path}")
            width, height = image_size(image_path)
        objects = []
        for i, o in enumerate(p["objects"]):
            if o["name"] not in index:
                if strict:
                    raise DataError(f"{xml_path}: object {i + 1}: unknown class {o['name']!r} "
                                    f"(known: {', '.join(class_names)})")
            xmin, ymin, xmax, ymax = o["box"]
            box = fix([xmin - 1.0, ymin - 1.0, xmax, ymax], width, height)
            if box is None:
                continue
            obj = {"box": box, "label": index[o["name"]], "ignore": o["difficult"] or o.get("iscrowd", False)}
            obj.update({k: v for k, v in o.items() if k not in ("name", "box")})
            objects.append(obj)
        records.append(make_record(image_id, str(image_path), width, height, objects, exact=not clip))
    dset = DetectionSet(records, class_names, format="voc", root=str(root), split=split)
    dset.stats.update(clipped=fix.clipped, dropped=fix.dropped)
    report_fixes(dset.stats, f"{root} [{split}]")
    return dset


def _fmt(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


def voc_image_ids(records) -> list[str]:
    """File stems used for VOC: the record's string id (spaces allowed), else the image file's stem; unique.

    An id that is not a plain one-line file name (``/``, ``\\``, ``..``, a line break, blanks at its ends)
    is replaced by the image file's stem, so that :func:`read_split_ids` reads back what was written.
    """
    def plain(i) -> bool:
        return (isinstance(i, str) and bool(i) and i == i.strip() and i not in (".", "..")
                and not any(c in i for c in "/\\\n\r\x00"))

    ids = []
    for r in records:
        ids.append(r.image_id if plain(r.image_id) else Path(r.path).stem)
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise DataError(f"cannot write VOC: image ids {dup} are not unique")
    return ids


def voc_xml(record, image_file: str, class_names: list[str], folder: str = "gdet") -> ET.Element:
    """The VOC ``<annotation>`` element of one record (see the module docstring for the box convention)."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = image_file
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text = str(record.width)
    ET.SubElement(size, "height").text = str(record.height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "0"
    for i in range(len(record)):
        x1, y1, x2, y2 = (float(v) for v in record.boxes[i].tolist())
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = class_names[int(record.labels[i])]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(bool(object_extra(record, "truncated", i, False))))
        if object_extra(record, "occluded", i) is not None:
            ET.SubElement(obj, "occluded").text = str(int(bool(object_extra(record, "occluded", i))))
        ET.SubElement(obj, "difficult").text = str(int(bool(record.ignore[i])))
        if object_extra(record, "iscrowd", i, False):
            ET.SubElement(obj, "iscrowd").text = "1"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1.0, y1 + 1.0, x2, y2)):
            ET.SubElement(bb, tag).text = _fmt(v)
    ET.indent(ann, space="    ")
    return ann


def _copy_image(src: Path, dst: Path) -> None:
    if dst.exists() and (dst.resolve() == src.resolve()):
        return
    if not src.is_file():
        raise DataError(f"{src}: image not found")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_voc(dset: DetectionSet, out_root: str | os.PathLike, split: str, copy_images: bool = True) -> Path:
    """Write ``dset`` as VOC split ``split`` under ``out_root``; the exact inverse of :func:`read_voc`.

    Writes ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``, ``classes.txt`` (the label order) and,
    with ``copy_images``, copies each image into ``JPEGImages/`` (kept as is if it is already there).
    ``ignore`` becomes ``<difficult>``; COCO crowd objects also get a ``<iscrowd>1</iscrowd>`` tag.

    Returns:
        the split file's path.
    """
    out_root = Path(out_root)
    ids = voc_image_ids(dset.records)
    for image_id, r in zip(ids, dset.records):
        src = Path(r.path)
        image_file = f"{image_id}{src.suffix.lower() or '.jpg'}"
        if copy_images:
            _copy_image(src, out_root / "JPEGImages" / image_file)
        ann = voc_xml(r, image_file, dset.class_names)
        with atomic_write(out_root / "Annotations" / f"{image_id}.xml", "wb") as f:
            ET.ElementTree(ann).write(f, encoding="utf-8", xml_declaration=False)
            f.write(b"\n")
    with atomic_write(out_root / "classes.txt", encoding="utf-8") as f:
        f.write("".join(f"{n}\n" for n in dset.class_names))
    split_file = out_root / "ImageSets" / "Main" / f"{split}.txt"
    with atomic_write(split_file, encoding="utf-8") as f:
        f.write("".join(f"{i}\n" for i in ids))
    return split_file
