"""Draw ground-truth boxes and class names on a dataset's images (PNG), so a person can look at the data."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from gdet.data.records import DetectionSet
from gdet.data.image import read_image
from gdet.io import atomic_write


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, bright RGB colour per class (golden-ratio hue steps)."""
    hsv = np.array([[[int((label * 0.618034 % 1.0) * 180), 220, 255]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _dashed_rect(img, p1, p2, colour, thickness, dash=6):
    (x1, y1), (x2, y2) = p1, p2
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        for s in range(0, length, 2 * dash):
            e = min(s + dash, length)
            f0, f1 = s / max(length, 1), e / max(length, 1)
            cv2.line(img, (round(ax + (bx - ax) * f0), round(ay + (by - ay) * f0)),
                     (round(ax + (bx - ax) * f1), round(ay + (by - ay) * f1)), colour, thickness, cv2.LINE_AA)


def draw_record(image: np.ndarray, record, class_names: list[str]) -> np.ndarray:
    """RGB image with the record's boxes: solid for normal objects, dashed and labelled ``name?`` for ignored
    (difficult / crowd) ones; each label sits in a filled tag of the class colour."""
    img = np.ascontiguousarray(image.copy())
    thick = max(1, round(max(img.shape[:2]) / 400))
    scale = max(0.35, max(img.shape[:2]) / 1400)
    for i in range(len(record)):
        x1, y1, x2, y2 = (int(round(v)) for v in record.boxes[i].tolist())
        label = int(record.labels[i])
        colour = class_colour(label)
        ignored = bool(record.ignore[i])
        p2 = (max(x1, x2 - 1), max(y1, y2 - 1))  # x2, y2 are exclusive pixel edges
        if ignored:
            _dashed_rect(img, (x1, y1), p2, colour, thick)
        else:
            cv2.rectangle(img, (x1, y1), p2, colour, thick, cv2.LINE_AA)
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = name + ("?" if ignored else "")
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + base + 2, img.shape[0] - 1)
        cv2.rectangle(img, (x1, ty - th - base), (x1 + tw + 2, ty), colour, -1)
        cv2.putText(img, text, (x1 + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def browse(dset: DetectionSet, out_dir: str | os.PathLike, max_images: int | None = 50,
           show_progress: bool = True) -> list[Path]:
    """Write ``<out_dir>/<image stem>.png`` with the ground truth drawn, for the first ``max_images`` images.

    Returns:
        the PNG paths.
    """
    from gdet.engine import erase_on_error, progress

    out_dir = Path(out_dir)
    records = dset.records[:max_images] if max_images else dset.records
    paths = []
    for r in erase_on_error(progress(records, desc="browse", unit="img", disable=not show_progress)):
        img = draw_record(read_image(r.path), r, dset.class_names)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        path = out_dir / f"{Path(r.path).stem}.png"
        with atomic_write(path, "wb") as f:
            f.write(buf.tobytes())
        paths.append(path)
    return paths
