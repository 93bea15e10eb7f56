"""`gdet eval --metric coco` on files equals pycocotools run on the same files, bit for bit (boxes past the image edge,
float coordinates, crowd regions, segment areas, non-default maxDets): the ground truth is scored as written."""
import contextlib
import io
import json
import math

import numpy as np
import pytest

from gdet.evaluation import COCO_STAT_NAMES
from gdet.evaluation.cli import evaluate_files


def make_files(tmp_path, seed):
    """A COCO instances file whose boxes often cross the image edge, and a result list; both as JSON files."""
    rng = np.random.default_rng(seed)
    images, anns, res = [], [], []
    cat_ids = [2, 7, 11]
    for i in rng.permutation(500)[:25].tolist():
        w, h = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        images.append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
        for _ in range(int(rng.integers(0, 8))):
            x, y = rng.uniform(-20, w - 5), rng.uniform(-20, h - 5)  # many cross the left/top/right/bottom edge
            bw, bh = rng.uniform(3, 70), rng.uniform(3, 70)
            box = [round(float(v), 2) for v in (x, y, bw, bh)]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.choice(cat_ids)), "bbox": box,
                         "area": round(bw * bh * float(rng.uniform(0.4, 1.0)), 3),
                         "iscrowd": int(rng.random() < 0.1)})
            for _ in range(int(rng.integers(0, 4))):  # near copies, some mislabelled
                jit = [v + float(rng.normal(0, 3)) for v in box]
                jit[2], jit[3] = max(jit[2], 0.5), max(jit[3], 0.5)
                res.append({"image_id": i, "category_id": int(rng.choice(cat_ids)) if rng.random() < 0.2 else
                            anns[-1]["category_id"], "bbox": [round(v, 2) for v in jit],
                            "score": round(float(rng.random()), 3)})
        for _ in range(int(rng.integers(0, 6))):  # background
            res.append({"image_id": i, "category_id": int(rng.choice(cat_ids)),
                        "bbox": [round(float(v), 2) for v in (rng.uniform(-10, w), rng.uniform(-10, h),
                                                             rng.uniform(1, 40), rng.uniform(1, 40))],
                        "score": round(float(rng.random()), 3)})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    outside = sum(a["bbox"][0] < 0 or a["bbox"][1] < 0 for a in anns)
    return tmp_path / "gt.json", tmp_path / "res.json", outside


def pycocotools_stats(gt_path, res_path, max_dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(res_path))
        E = COCOeval(gt, dt, "bbox")
        E.params.maxDets = list(max_dets)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return [float(v) if v > -1 else math.nan for v in E.stats]


@pytest.mark.parametrize("seed,max_dets", [(0, (1, 10, 100)), (1, (1, 3, 5)), (2, (2, 4, 300))])
def test_coco_eval_on_files_equals_pycocotools(tmp_path, seed, max_dets):
    gt, res, outside = make_files(tmp_path, seed)
    assert outside > 5  # the case that clipping used to change
    ref = pycocotools_stats(gt, res, max_dets)
    out = evaluate_files(gt, res, metric="coco", max_dets=max_dets)
    got = [out["summary"][n] for n in COCO_STAT_NAMES]
    assert len(got) == 12
    np.testing.assert_array_equal(got, ref)  # bit for bit (NaN where COCOeval gives -1)
    # summarize() reads AP with maxDets=100 literally (NaN when 100 is not a limit); AP50 uses maxDets[2]
    assert sum(not math.isnan(v) for v in ref) >= 8 and 0.05 < ref[1] < 0.95


def test_both_backends_equal_pycocotools_on_files(tmp_path):
    from gdet.data import load_detection_set
    from gdet.evaluation import COCOEvaluator, read_results

    gt, res, _ = make_files(tmp_path, 3)
    ref = pycocotools_stats(gt, res, (1, 10, 100))
    dset = load_detection_set(gt, check_images=False, clip=False)
    dets = read_results(res, dset.records, dset.class_names, dset.category_ids)
    for backend in ("fast", "pycocotools"):
        ev = COCOEvaluator(dset.class_names, backend=backend)
        ev.process(dset.records, dets)
        got = [ev.evaluate()["summary"][n] for n in COCO_STAT_NAMES]
        np.testing.assert_array_equal(got, ref, err_msg=backend)


def test_training_reader_still_clips(tmp_path):
    from gdet.data import load_detection_set

    gt, _, _ = make_files(tmp_path, 4)
    with pytest.warns(UserWarning, match="clipped"):
        train = load_detection_set(gt, check_images=False)
    exact = load_detection_set(gt, check_images=False, clip=False)
    assert min(float(r.boxes.min()) for r in train.records if len(r)) >= 0
    assert min(float(r.boxes.min()) for r in exact.records if len(r)) < 0
    assert exact.records[0].boxes.dtype == np.float64 or str(exact.records[0].boxes.dtype) == "torch.float64"
