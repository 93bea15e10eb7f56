"""Worker-safe image decoding to RGB uint8 (EXIF orientation, grayscale, alpha, 16-bit), a pixel-count limit
against decompression bombs, and the one array -> ``Tensor[3, H, W]`` conversion."""
from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from gdet.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Pillow's own error threshold (2 x Image.MAX_IMAGE_PIXELS = 2 x 89,478,485): about 13,400 x 13,400 pixels.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
MAX_PIXELS_ENV = "GDET_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The largest image (width x height) gdet decodes: ``$GDET_MAX_IMAGE_PIXELS``, default 178,956,970."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise DataError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: expected a positive whole number of pixels")
    return value


def _too_large(path: Path, width: int, height: int, limit: int) -> DataError:
    return DataError(f"{path}: image is {width}x{height} = {width * height:,} pixels, over the limit of {limit:,} "
                     f"(a decompression bomb?); to read it, set {MAX_PIXELS_ENV} to a larger number")


def _header(path: Path, orientation: bool = True) -> tuple[int, int, int]:
    """``(width, height, EXIF orientation)`` from the header alone, with no pixel limit (nothing is decoded;
    ``orientation=False`` skips the EXIF block, which some formats only reach by reading past the pixels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                return im.size[0], im.size[1], im.getexif().get(0x0112, 1) if orientation else 1
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit


def _open(path: Path, limit: int) -> Image.Image:
    """``Image.open`` with gdet's pixel limit in place of Pillow's (whose warning would print a raw line)."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and 2 * pil_limit < limit:
        # Pillow refuses images above twice its limit before gdet can check; raise it to the user's choice.
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:
            im = None
    if im is None:  # above Pillow's limit: read the size from the header alone to name it
        w, h, _ = _header(path, orientation=False)
        raise _too_large(path, w, h, limit)
    w, h = im.size
    if w * h > limit:
        im.close()
        raise _too_large(path, w, h, limit)
    return im


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an RGB ``uint8`` array of shape ``[H, W, 3]``.

    EXIF orientation is applied (the array is upright as a viewer shows it). Grayscale is replicated to three
    channels; an alpha channel is dropped (colour channels kept as they are, not composited); 16-bit grayscale
    is scaled to 8 bits (``round(v * 255 / 65535)``; 16-bit RGB is reduced by Pillow, ``v >> 8``); float
    images are clipped to 0..1 and scaled. Safe to call from DataLoader workers. Images over
    ``$GDET_MAX_IMAGE_PIXELS`` pixels (default 178,956,970, Pillow's own error threshold) are refused before
    decoding; a larger setting also raises Pillow's limit (``PIL.Image.MAX_IMAGE_PIXELS``) to match.

    Raises:
        DataError: the file is missing, truncated, not an image, or larger than :func:`max_image_pixels`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    limit = max_image_pixels()
    try:
        with _open(path, limit) as im:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = ImageOps.exif_transpose(im)
            return _to_rgb_uint8(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image: {e}") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, read from its header (EXIF orientation applied; nothing decoded)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    try:
        w, h, orientation = _header(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image: {e}") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def to_chw(image: np.ndarray | Tensor) -> Tensor:
    """An ``[H, W, 3]`` array or tensor (any dtype, e.g. :func:`read_image`'s uint8) -> ``Tensor[3, H, W]``.

    A tensor whose first dimension is 3 is taken as ``[3, H, W]`` already and returned as is. The values are not
    scaled or normalised (do that on the device, after the transfer).
    """
    if isinstance(image, Tensor):
        return image if image.ndim == 3 and image.shape[0] == 3 else image.permute(2, 0, 1).contiguous()
    # "W": a read-only decode (1x1 images transpose without a copy) must not become a read-only tensor.
    return torch.from_numpy(np.require(np.asarray(image).transpose(2, 0, 1), requirements=["C", "W"]))


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
