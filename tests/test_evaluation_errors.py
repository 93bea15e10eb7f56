"""The false-positive breakdown of `gdet eval --errors` against hand-made cases and a naive reference."""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gdet.cli import main as gdet_main
from gdet.data import DetectionSet, write_voc
from gdet.evaluation import VOCEvaluator, write_results
from gdet.evaluation.errors import KINDS, error_breakdown, format_errors
from gdet.structures import ImageRecord


def rec(i, boxes, labels, ignore=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    ignore = torch.zeros(len(labels), dtype=torch.bool) if ignore is None else torch.tensor(ignore)
    return ImageRecord(f"{i:06d}", f"{i:06d}.jpg", 400, 400, boxes=boxes, labels=torch.tensor(labels), ignore=ignore)


def det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


def hand_made():
    """Class 0 has five counted objects; its detections are one of each kind, in score order, plus two that
    do not count: one on an ignored object (highest score) and a sixth (beyond N = 5)."""
    recs = [rec(0, [[0, 0, 40, 40], [100, 100, 140, 140], [200, 0, 240, 40]], [0, 1, 0], [False, False, True]),
            rec(1, [[0, 0, 30, 30], [50, 50, 90, 90], [100, 0, 150, 50], [200, 200, 260, 260]], [0, 0, 0, 0])]
    dets = [det([[200, 0, 240, 40], [0, 0, 40, 40], [1, 1, 40, 40], [100, 100, 140, 140], [20, 20, 60, 60],
                 [300, 300, 310, 320], [0, 0, 40, 40], [100, 100, 140, 140]],
                [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.9], [0, 0, 0, 0, 0, 0, 0, 1]),
            det([], [], [])]
    return recs, dets


def test_each_kind_counted_once():
    recs, dets = hand_made()
    ev = VOCEvaluator(["a", "b"])
    ev.process(recs, dets)
    res = error_breakdown(ev)
    a, b = res["per_class"]
    assert a["n"] == 5 and all(a[k] == 1 for k in KINDS), a
    assert a["background_side"] == pytest.approx(math.sqrt(10 * 20))
    assert b["n"] == 1 and b["correct"] == 1 and math.isnan(b["background_side"])
    assert res["total"]["n"] == 6 and res["total"]["correct"] == 2
    table = format_errors(res)
    assert "localisation" in table.splitlines()[1] and table.splitlines()[-1].split()[:3] == ["all", "6", "33.3"]


def test_py_faster_rcnn_rule_moves_a_match_at_exactly_the_threshold():
    # IoU exactly 0.5: a TP under the devkit (>=), a localisation error under py-faster-rcnn (>)
    recs = [rec(0, [[0, 0, 20, 10]], [0])]
    dets = [det([[0, 0, 10, 10]], [0.9], [0])]
    for compat, kind in (("devkit", "correct"), ("py-faster-rcnn", "localisation")):
        ev = VOCEvaluator(["a"], compat=compat)
        ev.process(recs, dets)
        assert error_breakdown(ev)["per_class"][0][kind] == 1


def iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def naive(recs, dets, num_classes, low=0.1):
    """Hoiem's breakdown written out with loops: VOC matching per class in score order, then the kinds."""
    out = []
    for k in range(num_classes):
        cand = [(float(d["scores"][j]), i, j) for i, d in enumerate(dets) for j in range(len(d["scores"]))
                if int(d["labels"][j]) == k]
        cand.sort(key=lambda t: -t[0])  # stable: arrival order breaks ties, as the devkit
        claimed = set()
        npos = sum(int((r.labels == k).logical_and(~r.ignore).sum()) for r in recs)
        counts = dict.fromkeys(KINDS, 0)
        n = 0
        for _, i, j in cand:
            if n == npos:
                break
            box = dets[i]["boxes"][j].tolist()
            gts = [(g, iou(box, recs[i].boxes[g].tolist())) for g in range(len(recs[i].labels))
                   if int(recs[i].labels[g]) == k]
            best_g, best = max(gts, key=lambda t: t[1]) if gts else (None, -1.0)  # first of equal IoUs
            if best >= 0.5 and bool(recs[i].ignore[best_g]):
                continue
            n += 1
            if best >= 0.5 and best_g not in {c[1] for c in claimed if c[0] == i}:
                claimed.add((i, best_g))
                counts["correct"] += 1
            elif best >= 0.5:
                counts["duplicate"] += 1
            elif best >= low:
                counts["localisation"] += 1
            elif any(iou(box, recs[i].boxes[g].tolist()) >= low for g in range(len(recs[i].labels))
                     if int(recs[i].labels[g]) != k):
                counts["confusion"] += 1
            else:
                counts["background"] += 1
        out.append({"n": n, **counts})
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_naive_reference_on_random_scenes(seed):
    g = np.random.default_rng(seed)

    def boxes(n, spread):
        xy = g.uniform(0, 300, (n, 2))
        wh = g.uniform(10, spread, (n, 2))
        return np.round(np.concatenate([xy, xy + wh], 1)).tolist()

    recs, dets = [], []
    for i in range(12):
        ng = int(g.integers(0, 6))
        recs.append(rec(i, boxes(ng, 120) if ng else [], g.integers(0, 3, ng).tolist(),
                        (g.random(ng) < 0.15).tolist()))
        # detections near the objects (jittered copies) and anywhere
        near = [[v + g.normal(0, 8) for v in b] for b in recs[-1].boxes.tolist() for _ in range(3)]
        near = [[min(b[0], b[2] - 1), min(b[1], b[3] - 1), b[2], b[3]] for b in near]
        anywhere = boxes(int(g.integers(0, 5)), 80)
        allb = near + anywhere
        dets.append(det(allb if allb else [], np.round(g.random(len(allb)), 2).tolist(),
                        g.integers(0, 3, len(allb)).tolist()))
    ev = VOCEvaluator(["a", "b", "c"])
    ev.process(recs, dets)
    got = error_breakdown(ev)["per_class"]
    want = naive(recs, dets, 3)
    assert [{k: r[k] for k in ("n", *KINDS)} for r in got] == want
    assert sum(r["n"] for r in want) > 10 and sum(r["background"] + r["confusion"] for r in want) > 0


def test_gdet_eval_errors(tmp_path):
    recs, dets = hand_made()
    recs = [ImageRecord(r.image_id, str(tmp_path / f"{r.image_id}.jpg"), r.width, r.height, r.boxes, r.labels,
                        r.ignore) for r in recs]
    write_voc(DetectionSet(recs, ["a", "b"], format="voc"), tmp_path / "voc", "val", copy_images=False)
    write_results(tmp_path / "dets.json", recs, dets, ["a", "b"])
    for metric in ("voc", "coco"):
        out = tmp_path / f"{metric}.json"
        args = ["eval", "--data", str(tmp_path / "voc"), "--dets", str(tmp_path / "dets.json"), "--metrics", metric,
                "--errors", "--plots", str(tmp_path / metric), "--json", str(out)]
        r = CliRunner().invoke(gdet_main, args)
        assert r.exit_code == 0, r.output
        assert "top-N detections per class" in r.output and "background" in r.output
        res = json.loads(out.read_text())
        a = res["errors"]["per_class"][0]
        assert [a[k] for k in KINDS] == [1, 1, 1, 1, 1]
        assert (tmp_path / metric / "errors.png").stat().st_size > 1000
