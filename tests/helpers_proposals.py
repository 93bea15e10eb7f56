"""Tiny synthetic images and a tiny VOC dataset for the proposal tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def blob_image(seed: int = 0, h: int = 96, w: int = 128, n: int = 3):
    """A smooth noisy background with ``n`` flat coloured rectangles; returns (RGB uint8, boxes xyxy list)."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    img = cv2.GaussianBlur(img, (9, 9), 3)
    boxes = []
    for _ in range(n):
        bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        img[y:y + bh, x:x + bw] = color
        boxes.append([x, y, x + bw, y + bh])
    return img, boxes


def write_voc(root: Path, n: int = 4, split: str = "val", h: int = 96, w: int = 128, seed: int = 0) -> Path:
    """A VOC-layout dataset of ``n`` blob images (class ``blob``) with a ``classes.txt``."""
    root = Path(root)
    for d in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("blob\n")
    ids = []
    for i in range(n):
        img, boxes = blob_image(seed + i, h, w)
        image_id = f"img{i:03d}"
        ids.append(image_id)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        objs = "".join(
            f"<object><name>blob</name><difficult>0</difficult><truncated>0</truncated><bndbox>"
            f"<xmin>{b[0] + 1}</xmin><ymin>{b[1] + 1}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for b in boxes)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.png</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root
