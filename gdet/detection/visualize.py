"""Drawing detections (boxes, class names, scores) on an image with OpenCV, and writing it as PNG atomically.

A class has the same colour here as in the ground-truth pictures of ``gdet data browse``."""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from gdet.data.browse import class_colour
from gdet.io import atomic_path

__all__ = ["class_colour", "draw_detections", "save_png"]


def draw_detections(image: np.ndarray, dets: dict, class_names: Sequence[str], thickness: int | None = None,
                    ) -> np.ndarray:
    """Draw boxes with ``class score`` labels on a copy of an RGB ``uint8 [H, W, 3]`` image.

    Args:
        dets: ``{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": Tensor[K]}``; drawn lowest score first so
            that the best boxes end on top.
    """
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    t = thickness or max(1, round(max(h, w) / 300))
    scale = max(0.35, max(h, w) / 900)
    order = np.argsort(np.asarray(dets["scores"]).reshape(-1), kind="stable")
    for k in order:
        x1, y1, x2, y2 = (int(round(float(v))) for v in dets["boxes"][k])
        label = int(dets["labels"][k])
        colour = class_colour(label)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, t, lineType=cv2.LINE_AA)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {float(dets['scores'][k]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + 2, h - base)
        cv2.rectangle(out, (x1, ty - th - 1), (min(x1 + tw + 2, w - 1), ty + base - 1), colour, -1)
        cv2.putText(out, text, (x1 + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write an RGB ``uint8`` image as PNG, atomically."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write PNG")
