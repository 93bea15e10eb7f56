"""Test-time crops: the paper's 144 crops, the standard 10 crops and the single centre crop.

Geometry is a pure function (:func:`crop_boxes`) so it can be checked exactly; :func:`apply_crops` cuts them.
For a network whose input is not 224, every length scales by ``input_size / 224`` (rounded).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from gdet.errors import ConfigError, GdetError

CROP_SCHEMES = (1, 10, 144)
INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")
PAPER_SCALES = (256, 288, 320, 352)


def resize(img: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize a ``Tensor[3, H, W]`` (any dtype) to ``size = (h, w)`` with ``mode`` in :data:`INTERPOLATIONS`;
    bilinear and bicubic are antialiased when shrinking, as a photo editor would."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    dtype = img.dtype
    x = img.unsqueeze(0).float()
    if mode in ("bilinear", "bicubic"):
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    elif mode in ("area", "nearest"):
        x = F.interpolate(x, size=size, mode=mode)
    else:
        raise ConfigError(f"interpolation {mode!r}: unknown (use {', '.join(INTERPOLATIONS)})")
    x = x[0]
    if dtype == torch.uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x


def shorter_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) after resizing so that the shorter side is ``side`` (aspect kept, the long side rounded)."""
    if width <= height:
        return int(math.floor(height * side / width + 0.5)), side
    return side, int(math.floor(width * side / height + 0.5))


class Crop(NamedTuple):
    """One test crop.

    Attributes:
        resized: (h, w) the image is resized to first (shorter side = the scale).
        box: (x1, y1, x2, y2) integer pixels in the resized image; the region is resized to the network input
            size if it is not already that size (the paper's "square resized to 224").
        flip: mirror horizontally.
    """

    resized: tuple[int, int]
    box: tuple[int, int, int, int]
    flip: bool


def _scaled(v: int, input_size: int) -> int:
    return int(math.floor(v * input_size / 224 + 0.5))


def _five(x0: int, y0: int, side_w: int, side_h: int, c: int) -> list[tuple[int, int, int, int]]:
    """Top-left, top-right, bottom-left, bottom-right and centre ``c`` boxes inside a region."""
    x1, y1 = x0 + side_w - c, y0 + side_h - c
    xc, yc = x0 + (side_w - c) // 2, y0 + (side_h - c) // 2
    return [(x, y, x + c, y + c) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1), (xc, yc))]


def crop_boxes(width: int, height: int, crops: int, input_size: int = 224) -> list[Crop]:
    """The test crops of a ``width`` x ``height`` image.

    - 1: shorter side resized to 256, the centre 224 crop.
    - 10: shorter side 256; the 4 corner and the centre 224 crops, and their mirrors.
    - 144 (the paper, section 7): shorter side resized to 256, 288, 320 and 352; the left, centre and right
      squares (top, centre and bottom for portrait images); from each square the 4 corner and the centre 224
      crops and the square itself resized to 224; and their mirrors: 4 x 3 x 6 x 2.

    Each crop is followed by its mirror. All lengths scale by ``input_size / 224``.

    Returns:
        a list of :class:`Crop` (``crops`` long).
    """
    if crops not in CROP_SCHEMES:
        raise GdetError(f"crops {crops}: unknown (use 1, 10 or 144)")
    c = int(input_size)
    out: list[Crop] = []
    if crops in (1, 10):
        h, w = shorter_side_size(height, width, _scaled(256, c))
        boxes = _five(0, 0, w, h, c)
        if crops == 1:
            return [Crop((h, w), boxes[4], False)]
        for b in boxes:
            out += [Crop((h, w), b, False), Crop((h, w), b, True)]
        return out
    for scale in PAPER_SCALES:
        s = _scaled(scale, c)
        h, w = shorter_side_size(height, width, s)
        if w >= h:  # landscape (or square): left, centre, right squares
            squares = [(0, 0), ((w - s) // 2, 0), (w - s, 0)]
        else:  # portrait: top, centre, bottom
            squares = [(0, 0), (0, (h - s) // 2), (0, h - s)]
        for x0, y0 in squares:
            for b in _five(x0, y0, s, s, c) + [(x0, y0, x0 + s, y0 + s)]:
                out += [Crop((h, w), b, False), Crop((h, w), b, True)]
    return out


def apply_crops(image: Tensor, crops: list[Crop], input_size: int = 224) -> Tensor:
    """Cut ``crops`` out of ``image`` (``Tensor[3, H, W]``, uint8 or float, on any device).

    Returns:
        Tensor[K, 3, input_size, input_size] of ``image``'s dtype; the image is resized once per scale.
    """
    out = []
    cache: dict[tuple[int, int], Tensor] = {}
    for crop in crops:
        if crop.resized not in cache:
            cache[crop.resized] = resize(image, crop.resized, "bilinear")
        x1, y1, x2, y2 = crop.box
        patch = cache[crop.resized][:, y1:y2, x1:x2]
        patch = resize(patch, (input_size, input_size), "bilinear")
        out.append(patch.flip(-1) if crop.flip else patch)
    return torch.stack(out)
