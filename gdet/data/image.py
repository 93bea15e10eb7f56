"""Worker-safe image decoding to RGB uint8, with EXIF orientation, grayscale, alpha and 16-bit images handled."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gdet.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an RGB ``uint8`` array of shape ``[H, W, 3]``.

    EXIF orientation is applied (the array is upright as a viewer shows it). Grayscale is replicated to three
    channels; an alpha channel is dropped (colour channels kept as they are, not composited); 16-bit grayscale
    is scaled to 8 bits (``round(v * 255 / 65535)``; 16-bit RGB is reduced by Pillow, ``v >> 8``); float
    images are clipped to 0..1 and scaled. Safe to call from DataLoader workers (no global state).

    Raises:
        DataError: the file is missing, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return _to_rgb_uint8(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image: {e}") from None


def _to_rgb_uint8(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        scale = 65535.0 if mode.startswith("I;16") or a.max(initial=0) <= 65535 else float(2**32 - 1)
        a = np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(np.rint(np.clip(a, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if mode != "RGB":
        im = im.convert("RGB")
    a = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(a)


def expand_image_paths(items: Sequence[str | os.PathLike]) -> list[str]:
    """Image files named by command-line arguments: files, folders (their images, recursively, sorted) and glob
    patterns (``"photos/*.jpg"``), in the order given.

    Raises:
        DataError: an argument names nothing, or a folder or pattern holds no image.
    """
    paths: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise DataError(f"{p}: no images in this folder")
            paths += found
        elif p.is_file():
            paths.append(str(p))
        elif glob.has_magic(str(item)):
            found = sorted(f for f in glob.glob(str(item), recursive=True)
                           if Path(f).is_file() and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"{item}: no image matches this pattern")
            paths += found
        else:
            raise DataError(f"{p}: image not found")
    return paths
