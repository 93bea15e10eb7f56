"""Shared helpers (no tests) for the detection tests: a hand-drawn VOC set, a proposal file, tiny detectors."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from gdet.backbones import build_backbone
from gdet.data import DetectionSet, write_voc
from gdet.detection.model import Detector, detector_checkpoint_meta
from gdet.engine import save_checkpoint
from gdet.proposals import ProposalSet, save_proposals
from gdet.structures import ImageRecord

CLASSES = ["square", "disc"]


def make_voc(root: Path, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (96, 72), seed: int = 0) -> Path:
    """Noise images with one white square (class 0) and one grey disc (class 1) each, as a VOC folder."""
    rng = np.random.default_rng(seed)
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    w, h = size
    splits = {"train": [], "val": []}
    for i in range(n_train + n_val):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        s = int(rng.integers(16, 28))
        x, y = int(rng.integers(0, w // 2 - s)), int(rng.integers(0, h - s))
        img[y:y + s, x:x + s] = 255
        r = int(rng.integers(8, 14))
        cx, cy = int(rng.integers(w // 2 + r, w - r)), int(rng.integers(r, h - r))
        cv2.circle(img, (cx, cy), r, (160, 160, 160), -1)
        path = src / f"im{i:03d}.png"
        cv2.imwrite(str(path), img)
        rec = ImageRecord(image_id=f"im{i:03d}", path=str(path), width=w, height=h,
                          boxes=torch.tensor([[x, y, x + s, y + s], [cx - r, cy - r, cx + r, cy + r]], dtype=torch.float32),
                          labels=torch.tensor([0, 1]), ignore=torch.tensor([False, False]))
        splits["train" if i < n_train else "val"].append(rec)
    out = root / "voc"
    for split, recs in splits.items():
        write_voc(DetectionSet(recs, CLASSES), out, split)
    return out


def make_proposals(records, path: Path, per_image: int = 30, seed: int = 0) -> Path:
    """Jittered ground-truth boxes plus random boxes, best first."""
    g = torch.Generator().manual_seed(seed)
    ids, boxes, scores = [], [], []
    for r in records:
        jit = r.boxes.repeat(per_image // 3, 1) + torch.randn(len(r.boxes) * (per_image // 3), 4, generator=g) * 4
        xy = torch.rand(per_image - len(jit), 2, generator=g) * torch.tensor([r.width, r.height]) * 0.7
        rnd = torch.cat([xy, xy + torch.rand(len(xy), 2, generator=g) * 30 + 6], 1)
        b = torch.cat([jit, rnd])
        b[:, 0::2] = b[:, 0::2].clamp(0, r.width)
        b[:, 1::2] = b[:, 1::2].clamp(0, r.height)
        ids.append(r.image_id)
        boxes.append(b)
        scores.append(torch.linspace(1, 0.1, len(b)))
    save_proposals(path, ProposalSet.from_lists(ids, boxes, scores))
    return path


def tiny_detector(num_classes: int = 2, input_size: int = 32, seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    net = build_backbone("googlenet", num_classes=num_classes + 1, aux_logits=False)
    return Detector(net, CLASSES[:num_classes] if num_classes <= 2 else [f"c{i}" for i in range(num_classes)],
                    context_pad=2, input_size=input_size).eval()


def save_detector(model: Detector, path: Path) -> Path:
    save_checkpoint({"model": model.state_dict(), **detector_checkpoint_meta(model, {"aux_logits": False})}, path)
    return path
