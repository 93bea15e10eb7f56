"""Evaluation speed: gdet's VOC / ILSVRC / COCO evaluators against pycocotools' COCOeval and faster-coco-eval
(when installed, ``pip install gdet[bench]``) on the same data, with a check that the 12 COCO numbers agree."""
from __future__ import annotations

import contextlib
import io
import time

import click
import numpy as np
import torch

from gdet.structures import ImageRecord


def synthetic(num_images: int, num_classes: int, dets_per_image: int, seed: int = 0):
    """Records with 1-10 objects (10% ignored) and ``dets_per_image`` detections per image: noisy copies of the
    objects (some mislabelled) and random boxes, uniform scores."""
    rng = np.random.default_rng(seed)
    records, detections = [], []
    for i in range(num_images):
        n = int(rng.integers(1, 11))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, 200, (n, 2))], 1)
        labels = rng.integers(0, num_classes, n)
        records.append(ImageRecord(i + 1, "", 640, 480, boxes=torch.tensor(boxes, dtype=torch.float32),
                                   labels=torch.tensor(labels), ignore=torch.tensor(rng.random(n) < 0.1)))
        k = min(dets_per_image, 3 * n)
        src = rng.integers(0, n, k)
        near = boxes[src] + rng.normal(0, 8, (k, 4))
        xy = rng.uniform(0, 500, (dets_per_image - k, 2))
        far = np.concatenate([xy, xy + rng.uniform(8, 150, (dets_per_image - k, 2))], 1)
        db = np.concatenate([near, far])
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dl = np.concatenate([np.where(rng.random(k) < 0.8, labels[src], rng.integers(0, num_classes, k)),
                             rng.integers(0, num_classes, dets_per_image - k)])
        detections.append({"boxes": torch.tensor(db, dtype=torch.float32),
                           "scores": torch.tensor(rng.random(dets_per_image), dtype=torch.float32),
                           "labels": torch.tensor(dl, dtype=torch.int64)})
    return records, detections


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _gdet(metric, class_names, records, detections):
    from gdet.evaluation import build_evaluator

    def go():
        ev = build_evaluator(metric, class_names)
        ev.process(records, detections)
        return ev.evaluate()
    return _timed(go)


def _coco_lists(records, detections, class_names):
    """The ground-truth dict and result list as a user hands them to pycocotools (xywh in float64)."""
    anns, res = [], []
    for r, d in zip(records, detections):
        for b, l, ig in zip(r.boxes.double().tolist(), r.labels.tolist(), r.ignore.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": r.image_id, "category_id": l + 1,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
                         "iscrowd": int(ig)})
        for b, s, l in zip(d["boxes"].double().tolist(), d["scores"].double().tolist(), d["labels"].tolist()):
            res.append({"image_id": r.image_id, "category_id": l + 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        "score": s})
    gt = {"images": [{"id": r.image_id} for r in records], "annotations": anns,
          "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    return gt, res


def _pycocotools(records, detections, class_names):
    """pycocotools the usual way: COCO from the ground-truth dict, loadRes of the result list, COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict, res = _coco_lists(records, detections, class_names)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()

        def go():
            dt = gt.loadRes(res)
            E = COCOeval(gt, dt, "bbox")
            E.evaluate()
            E.accumulate()
            E.summarize()
            return E
        return _timed(go)


def _faster_coco_eval(records, detections, class_names):
    """faster-coco-eval (C++ evaluate/accumulate) the same way; ``None`` when it is not installed."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        return None
    gt_dict, res = _coco_lists(records, detections, class_names)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_dict)

        def go():
            dt = gt.loadRes(res)
            E = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
            E.evaluate()
            E.accumulate()
            E.summarize()
            return E
        return _timed(go)


def _max_difference(a, b) -> float:
    """Largest absolute difference between two lists of the 12 COCO stats (-1 and NaN count as equal)."""
    a = np.asarray(a, dtype=np.float64)[:12]
    b = np.asarray(b, dtype=np.float64)[:12]
    a, b = np.where(a > -1, a, -1.0), np.where(b > -1, b, -1.0)
    return float(np.max(np.abs(np.nan_to_num(a, nan=-1.0) - np.nan_to_num(b, nan=-1.0))))


@click.command()
@click.option("--images", default=5000, show_default=True, type=click.IntRange(min=1))
@click.option("--classes", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--dets", default=100, show_default=True, type=click.IntRange(min=1), help="detections per image")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--skip-pycocotools", is_flag=True,
              help="do not time pycocotools' own COCOeval (the slow part) nor faster-coco-eval")
def main(images, classes, dets, seed, skip_pycocotools):
    """Time mAP evaluation of IMAGES x DETS detections over CLASSES classes (CPU, in-memory records)."""
    names = [f"class{k}" for k in range(classes)]
    records, detections = synthetic(images, classes, dets, seed)
    click.echo(f"{images} images x {classes} classes x {dets} detections/image "
               f"({sum(len(r) for r in records)} objects, {images * dets} detections), "
               f"torch threads {torch.get_num_threads()}")
    rows = []
    stats = {}
    for metric in ("voc07", "voc", "ilsvrc", "coco"):
        t, res = _gdet(metric, names, records, detections)
        rows.append((f"gdet {metric}", t, res["mAP"]))
        if metric == "coco":
            from gdet.evaluation import COCO_STAT_NAMES

            stats["gdet coco"] = [res["summary"][n] for n in COCO_STAT_NAMES]
    peer = None
    if not skip_pycocotools:
        t, E = _pycocotools(records, detections, names)
        rows.append(("pycocotools COCOeval (loadRes+evaluate+accumulate)", t, float(E.stats[0])))
        stats["pycocotools"] = list(E.stats)
        peer = t
        fce = _faster_coco_eval(records, detections, names)
        if fce is None:
            click.echo("faster-coco-eval: not installed (pip install faster-coco-eval), not timed")
        else:
            t, E = fce
            rows.append(("faster-coco-eval COCOeval_faster (same steps)", t, float(E.stats[0])))
            stats["faster-coco-eval"] = list(E.stats)
    w = max(len(r[0]) for r in rows)
    click.echo(f"{'evaluator':<{w}}  {'seconds':>8}  {'mAP':>7}  {'vs pycocotools':>14}")
    for name, t, m in rows:
        ratio = f"{peer / t:13.1f}x" if peer else "             -"
        click.echo(f"{name:<{w}}  {t:8.2f}  {100 * m:7.2f}  {ratio}")
    if "pycocotools" in stats:
        for name in ("gdet coco", "faster-coco-eval"):
            if name in stats:
                d = _max_difference(stats[name], stats["pycocotools"])
                verdict = "equal" if d == 0 else ("equal to 1e-12" if d <= 1e-12 else "DIFFERENT")
                click.echo(f"12 COCO stats, {name} vs pycocotools: largest difference {d:.3g} ({verdict})")
