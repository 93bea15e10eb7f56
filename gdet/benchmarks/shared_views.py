"""``gdet bench shared-views``: how an R-CNN detector's network reads the same objects as R-CNN crops them and as
shared mode pools them, one change at a time.

Each ground-truth box (ignored ones left out) is classified four ways by the same weights, cut at the same stage
as shared mode (``--stage``), and each view's class accuracy is printed beside R-CNN's:

``rcnn``
    R-CNN mode: the context-padded box warped to ``S x S`` (``S``: the detector's crop size), the whole network.
``field``
    The same crop pasted into a mean-colour field (zero after normalisation), on the same grid of the stage (the
    offset is a multiple of its stride), the crop pooled from the stage map as shared mode pools. What changes:
    beyond the crop's edges each layer sees the field's activations instead of its own zero padding.
``scene``
    The whole image warped so that the same context box lands where the crop was: the same pixels on the same
    grid, with the real surroundings instead of the field.
``shared``
    Shared mode's geometry at the box's own scale: the image rescaled with its aspect kept until the (tight) box
    has ``S * S`` pixels, no grid alignment, the box pooled. With ``--scales`` the detector's real shared mode at
    that pyramid is a fifth row.

The rows separate the three things an R-CNN-trained network must get used to in shared mode: the crop's edges,
the surroundings, and the scale/aspect/grid phase of pooling. Without ``--data`` the objects come from synthetic
scenes (320 x 240, seed 2) that the shipped models never saw.
"""
from __future__ import annotations

import math
from collections import Counter

import click
import torch
import torch.nn.functional as F
from torch import Tensor

VIEWS = ("rcnn", "field", "scene", "shared")
MAX_SIDE = 2048  # boxes whose views need a larger warped image are left out
WHAT = {
    "rcnn": "warped crop, whole network (R-CNN)",
    "field": "the crop in a mean-colour field, same grid",
    "scene": "the image warped so the box is the crop, same grid",
    "shared": "the image rescaled to the box's area, any grid phase",
    "pyramid": "shared mode at --scales",
}


def warp(image: Tensor, fx: float, fy: float, ox: float, oy: float) -> Tensor:
    """``image`` scaled by ``(fx, fy)`` and moved by ``(ox, oy)`` output pixels, bilinear, zeros outside.

    Output pixel ``(u, v)`` (centre ``u + 0.5``) samples ``image`` at ``((u + 0.5 - ox) / fx, (v + 0.5 - oy) / fy)``
    in continuous coordinates, so input point ``x`` lands at ``x * fx + ox``. The output covers the whole moved
    image when ``ox, oy >= 0``.

    Args:
        image (Tensor[3, H, W]).
    Returns:
        Tensor[1, 3, H', W'].
    """
    h, w = image.shape[-2:]
    nh, nw = max(1, math.ceil(h * fy + oy)), max(1, math.ceil(w * fx + ox))
    u = (torch.arange(nw, dtype=torch.float32) + 0.5 - ox) / fx
    v = (torch.arange(nh, dtype=torch.float32) + 0.5 - oy) / fy
    gy, gx = torch.meshgrid(2 * v / h - 1, 2 * u / w - 1, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].to(image.dtype)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _pool_one(net, image: Tensor, box: Tensor) -> Tensor:
    """Logits of one box of a ``Tensor[1, 3, H, W]`` normalised image: trunk, ``net.pool``, the rest."""
    return net.forward_regions(net.pool([(net.split.trunk(image), 1.0, 1.0)], box[None]))[0][0]


@torch.no_grad()
def view_logits(det, net, img01: Tensor, boxes: Tensor) -> dict[str, Tensor]:
    """Logits of ``boxes`` in the ``field``, ``scene`` and ``shared`` views (``rcnn`` is ``det.score_regions``).

    Args:
        det: an rcnn-mode detector; net: its :class:`~gdet.detection.shared.SharedDetectorNet`.
        img01 (Tensor[3, H, W]): float 0-1; boxes (Tensor[N, 4]) in its pixels.
    Returns:
        ``{view: Tensor[N, C + 1]}``.
    """
    from gdet.detection.crops import context_boxes, crop_regions

    s, pad = det.input_size, det.context_pad
    margin = net.stride * math.ceil(s / 2 / net.stride)  # a multiple of the stride: the crop keeps R-CNN's grid
    norm = det.normalize(img01[None].float())[0]
    boxes = boxes.float()
    crops = crop_regions(norm, boxes, s, pad)  # N x 3 x S x S, R-CNN's input
    ctx = context_boxes(boxes, s, pad)
    crop_box = torch.tensor([margin, margin, margin + s, margin + s], dtype=torch.float32)
    out = {"field": [], "scene": [], "shared": []}
    for i in range(boxes.shape[0]):
        canvas = crops.new_zeros((1, 3, s + 2 * margin, s + 2 * margin))
        canvas[..., margin:margin + s, margin:margin + s] = crops[i]
        out["field"].append(_pool_one(net, canvas, crop_box))
        x1, y1, x2, y2 = ctx[i].tolist()
        fx, fy = s / max(x2 - x1, 1e-3), s / max(y2 - y1, 1e-3)
        # Moved by less than a stride so that the box's corner lands on the grid, where the crop's corner was.
        px, py = net.stride * math.ceil(x1 * fx / net.stride), net.stride * math.ceil(y1 * fy / net.stride)
        scene_box = torch.tensor([px, py, px + s, py + s], dtype=torch.float32)
        out["scene"].append(_pool_one(net, warp(norm, fx, fy, px - x1 * fx, py - y1 * fy), scene_box))
        b = boxes[i]
        f = s / math.sqrt(max(float((b[2] - b[0]) * (b[3] - b[1])), 1.0))
        out["shared"].append(_pool_one(net, warp(norm, f, f, 0.0, 0.0), b * f))
    return {k: torch.stack(v) for k, v in out.items()}


@torch.no_grad()
def read_views(det, images: list[tuple[Tensor, Tensor, Tensor]], stage: str | None = None,
               scales: list[int] | None = None, show_progress: bool = True) -> tuple[dict[str, Counter], str]:
    """Classify every box in each view.

    Args:
        det: an rcnn-mode :class:`~gdet.detection.model.Detector` (eval mode is set here).
        images: ``(Tensor[3, H, W] float 0-1, boxes Tensor[N, 4], labels Tensor[N] 0-based)`` per image.
        stage: shared mode's ``stage`` (None: the deepest stride-16 one).
        scales: also score shared mode at this pyramid (a ``"pyramid"`` row).
        show_progress: a progress bar over images.
    Returns:
        ``{view: Counter(right=..., background=..., total=...)}`` (``counts["rcnn"]["skipped"]``: boxes left
        out because a view would warp the image past ``MAX_SIDE`` pixels) and the stage's name.
    """
    from gdet.detection.shared import SharedDetectorNet
    from gdet.engine.logger import progress
    from gdet.errors import GdetError

    if det.mode != "rcnn":
        raise GdetError("--weights: a shared-mode detector; the views start from R-CNN's crops, so give an "
                        "rcnn-mode detector")
    det.eval()
    net = SharedDetectorNet.from_detector(det, stage=stage).eval()
    pyramid = SharedDetectorNet.from_detector(det, stage=stage, scales=scales).eval() if scales else None
    counts = {v: Counter() for v in VIEWS + (("pyramid",) if scales else ())}
    skipped = 0
    for img01, boxes, labels in progress(images, desc="views", unit="img", disable=not show_progress):
        # Tiny boxes in large images would need a huge warped image: left out of every view.
        keep = _warped_side(det, img01, boxes.float()) <= MAX_SIDE
        skipped += int((~keep).sum())
        boxes, labels = boxes[keep], labels[keep]
        if boxes.shape[0] == 0:
            continue
        preds = {"rcnn": det.score_regions(img01, boxes)[0].argmax(1)}
        preds.update({k: v.argmax(1) for k, v in view_logits(det, net, img01, boxes).items()})
        if pyramid is not None:
            preds["pyramid"] = pyramid.score_regions(img01, boxes)[0].argmax(1)
        truth = labels.long() + 1  # background is class 0
        for view, p in preds.items():
            counts[view].update(right=int((p == truth).sum()), background=int((p == 0).sum()),
                                total=int(truth.numel()))
    counts["rcnn"]["skipped"] = skipped
    return counts, net.stage


def _warped_side(det, img01: Tensor, boxes: Tensor) -> Tensor:
    """Tensor[N]: the longest side of the image as the scene and shared views warp it for each box."""
    from gdet.detection.crops import context_boxes

    h, w = img01.shape[-2:]
    s = det.input_size
    ctx = context_boxes(boxes, s, det.context_pad)
    fx = s / (ctx[:, 2] - ctx[:, 0]).clamp(min=1e-3)
    fy = s / (ctx[:, 3] - ctx[:, 1]).clamp(min=1e-3)
    f = s / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1.0).sqrt()
    return torch.stack([w * fx, h * fy, w * f, h * f], 1).amax(1)


def _generated(limit: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    from gdet.data.synth import SynthConfig, generate_image
    from gdet.detection.model import image_to_tensor

    cfg = SynthConfig(images=limit, seed=2, width=320, height=240)
    out = []
    for i in range(limit):
        img, objects = generate_image(cfg, i)
        objects = [o for o in objects if not o["difficult"]]
        boxes = torch.tensor([o["box"] for o in objects], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([o["label"] for o in objects], dtype=torch.long)
        out.append((image_to_tensor(img), boxes, labels))
    return out


def _dataset(data: str, split: str, limit: int, class_names: list[str]) -> list[tuple[Tensor, Tensor, Tensor]]:
    from gdet.data.dataset import load_detection_set
    from gdet.detection.model import image_to_tensor
    from gdet.errors import DataError

    ds = load_detection_set(data, split)
    if list(ds.class_names) != list(class_names):
        raise DataError(f"{data}: its classes {list(ds.class_names)} are not the detector's {list(class_names)}")
    out = []
    for rec in ds.records[:limit]:
        keep = ~rec.ignore
        out.append((image_to_tensor(rec.path), rec.boxes.float().reshape(-1, 4)[keep], rec.labels[keep]))
    return out


@click.command()
@click.option("--weights", default=None, type=click.Path(dir_okay=False),
              help="An rcnn-mode detector checkpoint (default: the shipped synthetic detector).")
@click.option("--data", default=None, type=click.Path(),
              help="Dataset with the detector's classes (VOC root, COCO .json; default: generated scenes).")
@click.option("--split", default="val", show_default=True)
@click.option("--limit", default=30, show_default=True, type=click.IntRange(min=1), help="Images read.")
@click.option("--stage", default=None, help="Shared mode's stage (default: the deepest stride-16 one).")
@click.option("--scales", default=None, help="Also score shared mode at this comma list of shorter sides.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads (default: torch's).")
def main(weights, data, split, limit, stage, scales, threads):
    """Class accuracy on ground-truth boxes: R-CNN's crops against shared mode's pooling, one change per row."""
    from gdet.cli import int_list
    from gdet.cli import ASSETS
    from gdet.detection.model import load_detector
    from gdet.errors import GdetError

    if threads:
        torch.set_num_threads(threads)
    scale_list = int_list(scales, "--scales") if scales else None
    det = load_detector(weights or ASSETS / "detector_synth_fp16.pth", "cpu")
    images = _dataset(data, split, limit, det.class_names) if data else _generated(limit)
    counts, stage_name = read_views(det, images, stage=stage, scales=scale_list)
    n = counts["rcnn"]["total"]
    if n == 0:
        raise GdetError(f"--data: no ground-truth boxes in the first {limit} images")
    skipped = counts["rcnn"]["skipped"]
    click.echo(f"torch {torch.__version__}, {n} boxes in {len(images)} images"
               + (f" ({skipped} left out: a view would exceed {MAX_SIDE} px)" if skipped else "")
               + f", crop {det.input_size} px (context {det.context_pad} px), stage {stage_name}")
    click.echo(f"{'view':<8} {'accuracy':>8} {'vs rcnn':>8} {'background':>10}  what the network sees")
    ref = counts["rcnn"]["right"] / n
    for view, c in counts.items():
        acc = c["right"] / n
        rel = f"{acc / ref:.2f}x" if ref > 0 else "n/a"
        click.echo(f"{view:<8} {acc:>8.3f} {rel:>8} {c['background'] / n:>10.3f}  {WHAT[view]}")

