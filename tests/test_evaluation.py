"""Evaluators against independent references written here (devkit loops, a brute-force COCO matcher) and pycocotools."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from gdet.errors import DataError, GdetError
from gdet.evaluation import (
    COCO_STAT_NAMES,
    COCOEvaluator,
    ILSVRCEvaluator,
    VOCEvaluator,
    build_evaluator,
    format_table,
    plot_pr_curves,
    read_results,
    save_result_json,
    write_results,
)
from gdet.evaluation.base import ARANGE_RECALL_THRESHOLDS, VOC07_RECALL_THRESHOLDS
from gdet.structures import ImageRecord

CLASSES = ["cat", "dog", "bird"]


# ----------------------------------------------------------------------------------------------------------------
# References, written as loops over detections the way the official code reads (not sharing gdet's code).

def ref_ap(rec, prec, use_07, thresholds):
    """VOCap.m / the VOC2007 11-point loop."""
    if use_07:
        ap = 0.0
        for t in thresholds:
            best = None
            for r, p in zip(rec, prec):
                if r >= t and (best is None or p > best):
                    best = p
            ap += (0.0 if best is None else best) / 11.0
        return ap
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def ref_overlap(bb, bbgt, plus_one):
    o = 1.0 if plus_one else 0.0
    iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + o
    ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + o
    if iw > 0 and ih > 0:
        ua = (bb[2] - bb[0] + o) * (bb[3] - bb[1] + o) + (bbgt[2] - bbgt[0] + o) * (bbgt[3] - bbgt[1] + o) - iw * ih
        return iw * ih / ua
    return None


def ref_voc(gts, dets, cls, use_07=False, strict=False, thresholds=VOC07_RECALL_THRESHOLDS, plus_one=False):
    """VOCevaldet.m for one class. gts: {image: [(box, label, difficult)]}; dets: [(image, label, score, box)]
    in file order. Returns AP (NaN without positives)."""
    gt = {img: {"BB": [b for b, l, d in objs if l == cls], "diff": [d for b, l, d in objs if l == cls]}
          for img, objs in gts.items()}
    for g in gt.values():
        g["det"] = [False] * len(g["BB"])
    npos = sum(sum(1 for d in g["diff"] if not d) for g in gt.values())
    mine = [d for d in dets if d[1] == cls]
    si = sorted(range(len(mine)), key=lambda i: -mine[i][2])  # Python's sort is stable, like MATLAB's
    tp, fp = [], []
    for i in si:
        img, _, _, bb = mine[i]
        g = gt[img]
        ovmax, jmax = -math.inf, None
        for j, bbgt in enumerate(g["BB"]):
            ov = ref_overlap(bb, bbgt, plus_one)
            if ov is not None and ov > ovmax:
                ovmax, jmax = ov, j
        hit = ovmax > 0.5 if strict else ovmax >= 0.5
        t = f = 0
        if hit:
            if not g["diff"][jmax]:
                if not g["det"][jmax]:
                    t = 1
                    g["det"][jmax] = True
                else:
                    f = 1
        else:
            f = 1
        tp.append(t)
        fp.append(f)
    if npos == 0:
        return math.nan
    ctp = np.cumsum(tp).tolist()
    cfp = np.cumsum(fp).tolist()
    rec = [t / npos for t in ctp]
    prec = [t / (t + f) if t + f > 0 else 0.0 for t, f in zip(ctp, cfp)]
    return ref_ap(rec, prec, use_07, thresholds)


def ref_ilsvrc(gts, dets, num_classes, plus_one=False):
    """eval_detection.m: per image, detections by decreasing score claim the best unclaimed box of their class
    whose IoU reaches min(0.5, wh/((w+10)(h+10))); then VOCap per class. Ignored boxes: claimed, not counted."""
    o = 1.0 if plus_one else 0.0
    tp_all, fp_all, sc_all, lab_all = [], [], [], []
    npos = [0] * num_classes
    for img, objs in gts.items():
        for b, l, ign in objs:
            if not ign:
                npos[l] += 1
        thr = []
        for b, l, ign in objs:
            w, h = b[2] - b[0] + o, b[3] - b[1] + o
            thr.append(min(0.5, (w * h) / ((w + 10) * (h + 10))))
        mine = [d for d in dets if d[0] == img]
        order = sorted(range(len(mine)), key=lambda i: -mine[i][2])
        claimed = [False] * len(objs)
        for i in order:
            _, lab, score, bb = mine[i]
            ovmax, kmax = -math.inf, -1
            for k, (bbgt, l, ign) in enumerate(objs):
                if claimed[k] or l != lab:
                    continue
                ov = ref_overlap(bb, bbgt, plus_one)
                if ov is not None and ov >= thr[k] and ov > ovmax:
                    ovmax, kmax = ov, k
            if kmax >= 0:
                claimed[kmax] = True
                tp_all.append(0 if objs[kmax][2] else 1)
                fp_all.append(0)
            else:
                tp_all.append(0)
                fp_all.append(1)
            sc_all.append(score)
            lab_all.append(lab)
    aps = []
    for c in range(num_classes):
        idx = [i for i in range(len(sc_all)) if lab_all[i] == c]
        idx = sorted(idx, key=lambda i: -sc_all[i])
        if npos[c] == 0:
            aps.append(math.nan)
            continue
        ctp = np.cumsum([tp_all[i] for i in idx]).tolist()
        cfp = np.cumsum([fp_all[i] for i in idx]).tolist()
        rec = [t / npos[c] for t in ctp]
        prec = [t / (t + f) if t + f > 0 else 0.0 for t, f in zip(ctp, cfp)]
        aps.append(ref_ap(rec, prec, False, None))
    return aps


def ref_coco_ap50(gts, dets, num_classes, max_dets=100):
    """Brute-force COCO AP at IoU 0.5 (no crowd, all areas): per image and class the top ``max_dets``
    detections by score greedily take the best-IoU free box with IoU >= 0.5; precision at 101 recall points."""
    out = []
    for c in range(num_classes):
        scores, tps, npos = [], [], 0
        for img, objs in gts.items():
            boxes = [b for b, l, ign in objs if l == c]
            npos += len(boxes)
            mine = [d for d in dets if d[0] == img and d[1] == c]
            mine = sorted(mine, key=lambda d: -d[2])[:max_dets]
            taken = [False] * len(boxes)
            for _, _, s, bb in mine:
                best, bj = 0.5, -1
                for j, g in enumerate(boxes):
                    ov = ref_overlap(bb, g, False) or 0.0
                    if not taken[j] and ov >= best:
                        best, bj = ov, j
                if bj >= 0:
                    taken[bj] = True
                scores.append(s)
                tps.append(bj >= 0)
        if npos == 0:
            out.append(math.nan)
            continue
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        tp = np.cumsum([tps[i] for i in order])
        fp = np.cumsum([not tps[i] for i in order])
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, 1e-300)
        q = []
        for r in np.linspace(0, 1, 101):
            ps = [p for rr, p in zip(rec, prec) if rr >= r]
            q.append(max(ps) if ps else 0.0)
        out.append(float(np.mean(q)))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Random data

def random_set(seed, num_images=25, num_classes=3, integer=True, p_ignore=0.2, tie_step=0.05, max_gt=6):
    """Records plus detections (jittered ground truth, duplicates, random boxes) with quantised scores (ties)."""
    rng = np.random.default_rng(seed)
    records, detections = [], []
    for i in range(num_images):
        n = int(rng.integers(0, max_gt + 1))
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(4, 50, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        if integer:
            boxes = np.round(boxes)
        labels = rng.integers(0, num_classes, n)
        ignore = rng.random(n) < p_ignore
        records.append(ImageRecord(f"im{i:03d}", "", 128, 128, boxes=torch.tensor(boxes, dtype=torch.float32),
                                   labels=torch.tensor(labels), ignore=torch.tensor(ignore)))
        d = []
        for b, l in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per object (duplicates)
                d.append((np.asarray(b) + rng.normal(0, 4, 4), l if rng.random() < 0.85 else rng.integers(num_classes)))
        for _ in range(int(rng.integers(0, 5))):
            xy = rng.uniform(0, 90, 2)
            d.append((np.concatenate([xy, xy + rng.uniform(4, 40, 2)]), rng.integers(num_classes)))
        db = np.array([x[0] for x in d]).reshape(-1, 4)
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        if integer:
            db = np.round(db)
        scores = np.round(rng.random(len(d)) / tie_step) * tie_step if tie_step else rng.random(len(d))
        detections.append({"boxes": torch.tensor(db, dtype=torch.float32),
                           "scores": torch.tensor(scores, dtype=torch.float32),
                           "labels": torch.tensor([int(x[1]) for x in d], dtype=torch.int64)})
    return records, detections


def as_lists(records, detections):
    gts = {r.image_id: [(r.boxes[j].double().tolist(), int(r.labels[j]), bool(r.ignore[j])) for j in range(len(r))]
           for r in records}
    dets = []
    for r, d in zip(records, detections):
        for j in range(d["scores"].numel()):
            dets.append((r.image_id, int(d["labels"][j]), float(d["scores"][j]), d["boxes"][j].double().tolist()))
    return gts, dets


def run(ev, records, detections):
    ev.process(records, detections)
    return ev.evaluate()


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9


# ----------------------------------------------------------------------------------------------------------------
# VOC

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("metric", ["voc07", "voc"])
@pytest.mark.parametrize("compat", ["devkit", "py-faster-rcnn"])
def test_voc_matches_devkit_reference(seed, metric, compat):
    records, detections = random_set(seed, integer=seed % 2 == 0)
    gts, dets = as_lists(records, detections)
    res = run(VOCEvaluator(CLASSES, metric=metric, compat=compat), records, detections)
    thr = VOC07_RECALL_THRESHOLDS if compat == "devkit" else ARANGE_RECALL_THRESHOLDS
    aps = [ref_voc(gts, dets, c, metric == "voc07", compat == "py-faster-rcnn", thr) for c in range(len(CLASSES))]
    for row, ap in zip(res["per_class"], aps):
        assert same(row["ap"], ap), (row, ap)
    assert same(res["mAP"], float(np.nanmean(aps)))


def test_voc_batches_equal_one_call():
    records, detections = random_set(5)
    whole = run(VOCEvaluator(CLASSES), records, detections)
    ev = VOCEvaluator(CLASSES)
    for s in range(0, len(records), 7):
        ev.process(records[s:s + 7], detections[s:s + 7])
    assert ev.evaluate()["per_class"] == whole["per_class"]
    ev.reset()
    ev.process(records, detections)
    assert ev.evaluate()["mAP"] == whole["mAP"]


def test_voc_plus_one_equals_devkit_on_xml_coordinates():
    # VOC XML boxes are 1-based inclusive; gdet's reader stores [xmin - 1, xmax). The devkit's +1 on the raw
    # XML numbers must equal gdet's plain IoU on converted boxes, and use_plus_one on raw numbers.
    records, detections = random_set(7, integer=True)
    raw_r = [ImageRecord(r.image_id, "", 128, 128, boxes=r.boxes + torch.tensor([1.0, 1.0, 0.0, 0.0]),
                         labels=r.labels, ignore=r.ignore) for r in records]
    raw_d = [dict(d, boxes=d["boxes"] + torch.tensor([1.0, 1.0, 0.0, 0.0])) for d in detections]
    gts, dets = as_lists(raw_r, raw_d)
    for metric in ("voc07", "voc"):
        ref = [ref_voc(gts, dets, c, metric == "voc07", plus_one=True) for c in range(3)]
        conv = run(VOCEvaluator(CLASSES, metric=metric), records, detections)
        plus = run(VOCEvaluator(CLASSES, metric=metric, use_plus_one=True), raw_r, raw_d)
        for a, b, r in zip(conv["per_class"], plus["per_class"], ref):
            assert same(a["ap"], r) and same(b["ap"], r)


def one_image(gt_boxes, gt_labels, det_boxes, scores, det_labels, ignore=None, image_id="a"):
    rec = ImageRecord(image_id, "", 100, 100, boxes=torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
                      labels=torch.tensor(gt_labels, dtype=torch.int64),
                      ignore=None if ignore is None else torch.tensor(ignore))
    det = {"boxes": torch.tensor(det_boxes, dtype=torch.float32).reshape(-1, 4),
           "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(det_labels, dtype=torch.int64)}
    return rec, det


A, B = [0, 0, 10, 10], [50, 50, 60, 60]


def test_duplicates_are_false_positives():
    rec, det = one_image([A, B], [0, 0], [A, A, B], [0.9, 0.8, 0.7], [0, 0, 0])
    res = run(VOCEvaluator(CLASSES), [rec], [det])
    # tp 1 0 1, fp 0 1 0 -> recall .5 .5 1, precision 1 .5 2/3 -> AP .5 + .5 * 2/3
    assert res["per_class"][0]["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    assert res["per_class"][0]["num_dets"] == 3 and res["per_class"][0]["num_gt"] == 2


def test_difficult_neither_positive_nor_false_positive():
    rec, det = one_image([A, B], [0, 0], [B, A], [0.9, 0.8], [0, 0], ignore=[False, True])
    res = run(VOCEvaluator(CLASSES), [rec], [det])
    assert res["per_class"][0]["ap"] == 1.0 and res["per_class"][0]["num_gt"] == 1
    # an image whose objects are all difficult: detections on them cost nothing, the class has no positives
    rec2, det2 = one_image([A], [1], [A], [0.9], [1], ignore=[True], image_id="b")
    res = run(VOCEvaluator(CLASSES), [rec, rec2], [det, det2])
    assert math.isnan(res["per_class"][1]["ap"]) and res["mAP"] == 1.0


def test_iou_exactly_half_devkit_vs_port():
    rec, det = one_image([A], [0], [[0, 0, 10, 5]], [0.9], [0])  # IoU = 50 / 100 exactly
    assert run(VOCEvaluator(CLASSES), [rec], [det])["mAP"] == 1.0
    assert run(VOCEvaluator(CLASSES, compat="py-faster-rcnn"), [rec], [det])["mAP"] == 0.0


def test_voc07_recall_exactly_point_six():
    boxes = [[10 * i, 0, 10 * i + 8, 8] for i in range(5)]
    rec, det = one_image(boxes, [0] * 5, boxes[:3], [0.9, 0.8, 0.7], [0, 0, 0])
    assert run(VOCEvaluator(CLASSES, metric="voc07"), [rec], [det])["mAP"] == pytest.approx(7 / 11, abs=1e-15)
    port = run(VOCEvaluator(CLASSES, metric="voc07", compat="py-faster-rcnn"), [rec], [det])
    assert port["mAP"] == pytest.approx(6 / 11, abs=1e-15)  # np.arange's 0.6000000000000001 misses recall 0.6
    assert run(VOCEvaluator(CLASSES, metric="voc"), [rec], [det])["mAP"] == pytest.approx(0.6, abs=1e-15)


def test_identical_scores_keep_arrival_order():
    # two detections with the same score: a false positive first, then the true positive
    rec, det = one_image([A], [0], [B, A], [0.5, 0.5], [0, 0])
    assert run(VOCEvaluator(CLASSES), [rec], [det])["mAP"] == pytest.approx(0.5)  # rec 0,1 prec 0,.5
    rec, det = one_image([A], [0], [A, B], [0.5, 0.5], [0, 0])
    assert run(VOCEvaluator(CLASSES), [rec], [det])["mAP"] == 1.0
    for ev in (ILSVRCEvaluator(CLASSES),):
        rec, det = one_image([A], [0], [B, A], [0.5, 0.5], [0, 0])
        assert run(ev, [rec], [det])["mAP"] == pytest.approx(0.5)


@pytest.mark.parametrize("metric", ["voc07", "voc", "coco", "ilsvrc"])
def test_perfect_predictions_give_one(metric):
    records, _ = random_set(3, p_ignore=0.0)
    dets = [{"boxes": r.boxes.clone(), "scores": torch.linspace(1, 0.5, len(r)), "labels": r.labels.clone()}
            for r in records]
    res = run(build_evaluator(metric, CLASSES), records, dets)
    assert res["mAP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("metric", ["voc07", "voc", "coco", "ilsvrc"])
def test_no_detections_and_empty_images(metric):
    records, _ = random_set(4)
    records.append(ImageRecord("empty", "", 64, 64))
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
             for _ in records]
    res = run(build_evaluator(metric, CLASSES + ["unused"]), records, empty)
    assert res["mAP"] == 0.0
    assert math.isnan(res["per_class"][3]["ap"])  # a class without ground truth: NaN, skipped by the mean
    assert all(r["num_dets"] == 0 for r in res["per_class"])
    # nothing at all
    res = run(build_evaluator(metric, CLASSES), [ImageRecord("e", "", 64, 64)], empty[:1])
    assert math.isnan(res["mAP"])


def test_bad_input_is_a_clear_error():
    rec, det = one_image([A], [0], [A], [0.9], [7])
    with pytest.raises(GdetError, match="label 7 out of range for 3 classes"):
        VOCEvaluator(CLASSES).process([rec], [det])
    rec, det = one_image([A], [0], [A], [0.9], [0])
    ev = VOCEvaluator(CLASSES)
    ev.process([rec], [det])
    with pytest.raises(GdetError, match="processed twice"):
        ev.process([rec], [det])
    with pytest.raises(GdetError, match="unknown metric"):
        build_evaluator("map", CLASSES)
    with pytest.raises(GdetError, match="NaN"):
        VOCEvaluator(CLASSES).process([rec], [dict(det, scores=torch.tensor([float("nan")]))])


# ----------------------------------------------------------------------------------------------------------------
# ILSVRC

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ilsvrc_matches_devkit_reference(seed):
    records, detections = random_set(seed + 10, integer=seed != 1, max_gt=8)
    gts, dets = as_lists(records, detections)
    res = run(ILSVRCEvaluator(CLASSES), records, detections)
    for row, ap in zip(res["per_class"], ref_ilsvrc(gts, dets, 3)):
        assert same(row["ap"], ap), (row, ap)
    res = run(ILSVRCEvaluator(CLASSES, use_plus_one=True), records, detections)
    for row, ap in zip(res["per_class"], ref_ilsvrc(gts, dets, 3, plus_one=True)):
        assert same(row["ap"], ap)


def test_ilsvrc_small_objects_get_lower_threshold():
    small = [0, 0, 10, 10]  # threshold 100 / 400 = 0.25
    rec, det = one_image([small], [0], [[0, 0, 10, 4]], [0.9], [0])  # IoU 0.4
    assert run(ILSVRCEvaluator(CLASSES), [rec], [det])["mAP"] == 1.0
    assert run(VOCEvaluator(CLASSES), [rec], [det])["mAP"] == 0.0
    # ILSVRC's matching skips claimed boxes: a second detection takes the next box instead of being a duplicate
    big1, big2 = [0, 0, 100, 100], [0, 0, 100, 80]
    rec, det = one_image([big1, big2], [0, 0], [big1, [0, 0, 100, 95]], [0.9, 0.8], [0, 0])
    assert run(ILSVRCEvaluator(CLASSES), [rec], [det])["mAP"] == 1.0
    assert run(VOCEvaluator(CLASSES), [rec], [det])["mAP"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------------------
# COCO

def pycocotools_on_files(gt_dict, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(gt_dict))
        gt.createIndex()
        dt = gt.loadRes(results)
        E = COCOeval(gt, dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def coco_dict(records, category_ids):
    images = [{"id": r.image_id, "width": r.width, "height": r.height} for r in records]
    anns = []
    for r in records:
        for j in range(len(r)):
            x1, y1, x2, y2 = r.boxes[j].double().tolist()
            anns.append({"id": len(anns) + 1, "image_id": r.image_id, "category_id": category_ids[int(r.labels[j])],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": r.extra["area"][j],
                         "iscrowd": int(r.ignore[j])})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": n} for c, n in zip(category_ids, CLASSES)]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_equals_pycocotools_on_files(seed, tmp_path):
    records, detections = random_set(seed, num_images=30, integer=seed == 0, p_ignore=0.15)
    rng = np.random.default_rng(seed)
    # COCO-like: integer image ids in a shuffled order, non-contiguous category ids, segment areas
    ids = rng.permutation(1000)[:len(records)].tolist()
    for r, i in zip(records, ids):
        r.image_id = int(i)
        wh = (r.boxes[:, 2:] - r.boxes[:, :2]).double()
        r.extra["area"] = (wh[:, 0] * wh[:, 1] * torch.from_numpy(rng.uniform(0.3, 1.0, len(r)))).tolist()
    cats = [3, 17, 90]
    path = tmp_path / "res.json"
    write_results(path, records, detections, CLASSES, cats)
    dets = read_results(path, records, CLASSES, cats)
    res = run(COCOEvaluator(CLASSES), records, dets)
    E = pycocotools_on_files(coco_dict(records, cats), str(path))
    for name, v in zip(COCO_STAT_NAMES, E.stats):
        assert same(res["summary"][name], float(v) if v > -1 else math.nan), name
    for k, row in enumerate(res["per_class"]):
        p = E.eval["precision"][:, :, k, 0, -1]
        assert same(row["ap"], float(p[p > -1].mean()))


@pytest.mark.parametrize("seed", [3, 4])
def test_coco_ap50_matches_brute_force(seed):
    records, detections = random_set(seed, p_ignore=0.0, integer=False, tie_step=0)
    gts, dets = as_lists(records, detections)
    res = run(COCOEvaluator(CLASSES), records, detections)
    for row, ap in zip(res["per_class"], ref_coco_ap50(gts, dets, 3)):
        assert same(row["ap50"], ap)


# ----------------------------------------------------------------------------------------------------------------
# Result files and outputs

def test_results_round_trip_exact(tmp_path):
    records, detections = random_set(9, integer=False)
    path = tmp_path / "r.json"
    n = write_results(path, records, detections, CLASSES)
    assert n == sum(d["scores"].numel() for d in detections)
    entries = json.loads(path.read_text())
    assert set(entries[0]) == {"image_id", "category_id", "bbox", "score"}
    assert {e["category_id"] for e in entries} <= {1, 2, 3}
    back = read_results(path, records, CLASSES)
    for d, b in zip(detections, back):
        assert torch.equal(d["boxes"].double(), b["boxes"])
        assert torch.equal(d["scores"].double(), b["scores"]) and torch.equal(d["labels"], b["labels"])
    # class names are accepted as category_id too
    entries[0]["category_id"] = CLASSES[1]
    path.write_text(json.dumps(entries))
    first = [r.image_id for r in records].index(entries[0]["image_id"])
    assert int(read_results(path, records, CLASSES)[first]["labels"][0]) == 1


@pytest.mark.parametrize("entry, message", [
    ({"image_id": "nope", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "entry 2: unknown image_id 'nope'"),
    ({"image_id": "a", "category_id": 9, "bbox": [0, 0, 1, 1], "score": 0.5}, "entry 2: unknown category_id 9"),
    ({"image_id": "a", "category_id": "horse", "bbox": [0, 0, 1, 1], "score": 0.5}, "unknown category_id 'horse'"),
    ({"image_id": "a", "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, "entry 2: bbox must be 4 numbers"),
    ({"image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1]}, "entry 2: missing 'score'"),
])
def test_read_results_errors(tmp_path, entry, message):
    rec, _ = one_image([A], [0], [A], [0.9], [0])
    good = {"image_id": "a", "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, entry]))
    with pytest.raises(DataError, match=message):
        read_results(path, [rec], CLASSES)
    path.write_text('{"not": "a list"}')
    with pytest.raises(DataError, match="expected a JSON list"):
        read_results(path, [rec], CLASSES)


def test_table_plot_and_json(tmp_path):
    records, detections = random_set(2)
    for metric in ("voc", "coco"):
        ev = build_evaluator(metric, CLASSES)
        res = run(ev, records, detections)
        table = format_table(res)
        assert all(c in table for c in CLASSES) and "#GT" in table
        png = tmp_path / f"pr_{metric}.png"
        plot_pr_curves(ev.curves, png, aps={r["class"]: r["ap"] for r in res["per_class"]}, title=metric)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        out = tmp_path / f"{metric}.json"
        save_result_json(res, out)
        back = json.loads(out.read_text())
        assert back["mAP"] == pytest.approx(res["mAP"]) and len(back["pr_curves"][CLASSES[0]]) == 101
        assert [r["num_gt"] for r in back["per_class"]] == [r["num_gt"] for r in res["per_class"]]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_coco_equals_pycocotools_backend(seed):
    # crowd regions, all area ranges, equal scores, and > 100 detections per image and class (maxDets cut)
    records, detections = random_set(seed, num_images=20, integer=seed % 2 == 0, p_ignore=0.2, max_gt=10)
    rng = np.random.default_rng(seed)
    for r in records:
        r.image_id = int(rng.integers(0, 10**6))
        wh = (r.boxes[:, 2:] - r.boxes[:, :2]).double()
        r.extra["area"] = (wh[:, 0] * wh[:, 1] * torch.from_numpy(rng.uniform(0.2, 3.0, len(r)))).tolist()
    big = records[0]
    n = 230
    xy = torch.from_numpy(rng.uniform(0, 60, (n, 2))).float()
    detections[0] = {"boxes": torch.cat([xy, xy + torch.from_numpy(rng.uniform(2, 60, (n, 2))).float()], 1),
                     "scores": torch.from_numpy(np.round(rng.random(n), 1)).float(),
                     "labels": torch.from_numpy(rng.integers(0, 2, n))}
    if len(big):
        detections[0]["boxes"][:len(big)] = big.boxes
    fev = COCOEvaluator(CLASSES, backend="fast")
    fast = run(fev, records, detections)
    ev = COCOEvaluator(CLASSES, backend="pycocotools")
    ref = run(ev, records, detections)
    for key in ("precision", "recall", "scores"):
        np.testing.assert_allclose(fev.cocoeval.eval[key], ev.cocoeval.eval[key], rtol=0, atol=1e-12)
    assert [same(fast["summary"][k], ref["summary"][k]) for k in COCO_STAT_NAMES] == [True] * 12
    for a, b in zip(fast["per_class"], ref["per_class"]):
        assert same(a["ap"], b["ap"]) and same(a["ap50"], b["ap50"])
    assert fast["pr_curves"] == ref["pr_curves"]
