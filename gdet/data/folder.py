"""Image-folder datasets for classification: ``root/<class>/*.jpg``."""
from __future__ import annotations

import os
from pathlib import Path

from gdet.data.image import IMAGE_EXTENSIONS
from gdet.data.voc import read_class_file
from gdet.errors import DataError


def read_image_folder(root: str | os.PathLike, class_names: list[str] | None = None,
                      ) -> tuple[list[str], list[int], list[str]]:
    """List an image folder ``root/<class>/<image>`` (images may sit in nested sub-folders of a class).

    Args:
        root: the folder.
        class_names: label order (e.g. the training set's, when reading a validation folder); default:
            ``root/classes.txt`` if present (one name a line; ``gdet data synth --task classify`` writes it so
            that crop labels match the detection labels), else the sorted sub-folder names. A sub-folder not
            in an explicit list is an error.

    Returns:
        (paths, labels, class_names): sorted image paths, their int labels, and the class names.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image>.jpg)")
    if class_names is None and (root / "classes.txt").is_file():
        class_names = read_class_file(root / "classes.txt")
    if class_names is None:
        class_names = found
    else:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DataError(f"{root}: unknown class folder(s) {unknown} (known: {', '.join(class_names)})")
    paths, labels = [], []
    for k, name in enumerate(class_names):
        d = root / name
        if not d.is_dir():
            continue
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        paths += [str(p) for p in files]
        labels += [k] * len(files)
    if not paths:
        raise DataError(f"{root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels, list(class_names)
