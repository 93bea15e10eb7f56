"""Smoke tests of `gdet eval` and tools/eval_map.py on tiny VOC and COCO datasets written to disk."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gdet.cli import main as gdet_main
from gdet.data import DetectionSet, write_coco, write_voc
from gdet.evaluation import read_results, write_results
from gdet.evaluation.cli import evaluate_files
from gdet.structures import ImageRecord

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square"]


def records(tmp_path):
    recs = []
    for i in range(4):
        boxes = torch.tensor([[4.0 + i, 5.0, 40.0, 44.0], [50.0, 50.0, 90.0, 80.0 + i]])
        recs.append(ImageRecord(f"{i:06d}", str(tmp_path / f"{i:06d}.jpg"), 96, 96, boxes=boxes,
                                labels=torch.tensor([0, 1]), ignore=torch.tensor([False, i == 3])))
    return recs


@pytest.fixture()
def data(tmp_path):
    recs = records(tmp_path)
    voc = tmp_path / "voc"
    write_voc(DetectionSet(recs, CLASSES, format="voc"), voc, "val", copy_images=False)
    coco_recs = [ImageRecord(10 + i, r.path, r.width, r.height, r.boxes, r.labels, r.ignore)
                 for i, r in enumerate(recs)]
    coco = write_coco(DetectionSet(coco_recs, CLASSES, category_ids=[5, 9], format="coco"), tmp_path / "val.json")
    # perfect detections plus one false positive, written with the library's own writer
    dets = [{"boxes": torch.cat([r.boxes, torch.tensor([[0.0, 60.0, 20.0, 90.0]])]),
             "scores": torch.tensor([0.9, 0.8, 0.1]), "labels": torch.tensor([0, 1, 0])} for r in recs]
    write_results(tmp_path / "voc_dets.json", recs, dets, CLASSES)
    write_results(tmp_path / "coco_dets.json", coco_recs, dets, CLASSES, category_ids=[5, 9])
    return {"voc": voc, "coco": coco, "voc_dets": tmp_path / "voc_dets.json",
            "coco_dets": tmp_path / "coco_dets.json", "tmp": tmp_path}


@pytest.mark.parametrize("metric", ["voc07", "voc", "ilsvrc"])
def test_gdet_eval_voc(data, metric):
    out = data["tmp"] / "res.json"
    r = CliRunner().invoke(gdet_main, ["eval", "--data", str(data["voc"]), "--dets", str(data["voc_dets"]),
                                       "--metrics", metric, "--plots", str(data["tmp"] / "plots"), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "circle" in r.output and f"mAP ({metric}) 100.0" in r.output
    res = json.loads(out.read_text())
    assert res["mAP"] == pytest.approx(1.0, abs=1e-12) and [c["num_gt"] for c in res["per_class"]] == [4, 3]
    assert (data["tmp"] / "plots" / f"pr_{metric}.png").stat().st_size > 1000


def test_gdet_eval_several_metrics(data):
    """``--metrics voc,coco`` (the vocabulary of gdet test): a table, a PR plot and a JSON entry per metric, each
    equal to that metric's own run; ``--metric`` is a second spelling of the option."""
    out = data["tmp"] / "both.json"
    args = ["eval", "--data", str(data["coco"]), "--dets", str(data["coco_dets"]), "--plots", str(data["tmp"] / "p")]
    r = CliRunner().invoke(gdet_main, args + ["--metrics", "voc,coco", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "mAP (voc) 100.0" in r.output and "AP50 100.0" in r.output
    both = json.loads(out.read_text())
    for metric in ("voc", "coco"):
        alone = data["tmp"] / f"{metric}.json"
        r = CliRunner().invoke(gdet_main, args + ["--metric", metric, "--json", str(alone)])
        assert r.exit_code == 0, r.output
        single = json.loads(alone.read_text())
        assert both[metric]["per_class"] == single["per_class"] and both[metric]["mAP"] == single["mAP"]
        assert (data["tmp"] / "p" / f"pr_{metric}.png").stat().st_size > 1000
    assert both["dets"] == str(data["coco_dets"]) and "per_class" not in both
    r = CliRunner().invoke(gdet_main, args[:5] + ["--metrics", "voc,map"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == ["error: --metrics: unknown metric 'map' (known: voc07, voc, coco, ilsvrc)"]


def test_gdet_eval_coco(data):
    res = evaluate_files(data["coco"], data["coco_dets"], "coco", out=data["tmp"] / "c.json")
    assert res["summary"]["AP50"] == pytest.approx(1.0) and res["mAP"] == pytest.approx(1.0)
    assert math.isnan(res["summary"]["APs"])  # no small objects
    back = json.loads((data["tmp"] / "c.json").read_text())
    assert back["summary"]["APs"] is None and back["gt"].endswith("val.json")


def test_voc_data_read_back_matches_in_memory(data):
    # the result file's ids/categories line up with what gdet's VOC reader returns
    from gdet.data import load_detection_set

    dset = load_detection_set(data["voc"], split="val", check_images=False)
    dets = read_results(data["voc_dets"], dset.records, dset.class_names, dset.category_ids)
    assert [len(d["scores"]) for d in dets] == [3, 3, 3, 3]
    assert torch.equal(dets[0]["boxes"][:2].float(), dset.records[0].boxes)


def test_gdet_eval_bad_input(data):
    bad = data["tmp"] / "bad.json"
    bad.write_text(json.dumps([{"image_id": "999999", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    r = CliRunner().invoke(gdet_main, ["eval", "--data", str(data["voc"]), "--dets", str(bad)])
    assert r.exit_code == 1
    expected = f"error: {bad}: entry 1: unknown image_id '999999' (not in the ground truth)"
    assert r.output.strip().splitlines() == [expected]


def test_tools_eval_map_subprocess(data):
    env = dict(os.environ, OMP_NUM_THREADS="1", GDET_NO_PROGRESS="1")
    cmd = [sys.executable, str(ROOT / "tools" / "eval_map.py"), "--data", str(data["coco"]), "--dets",
           str(data["coco_dets"]), "--metric", "coco"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "AP50 100.0" in p.stdout
    p = subprocess.run(cmd[:-4] + ["--dets", str(data["tmp"] / "missing.json"), "--metric", "coco"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: {data['tmp'] / 'missing.json'}: file not found"


def test_benchmark_smoke():
    from gdet.benchmarks.eval import main as bench_main

    r = CliRunner().invoke(bench_main, ["--images", "12", "--classes", "3", "--dets", "10"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(line.startswith("gdet coco") for line in lines) and "pycocotools COCOeval" in r.output
    coco = [line.split() for line in lines if line.startswith(("gdet coco", "pycocotools"))]
    assert coco[0][-2] == coco[1][-2]  # same AP from gdet and from pycocotools
    assert "12 COCO stats, gdet coco vs pycocotools: largest difference 0 (equal)" in lines
    try:
        import faster_coco_eval  # noqa: F401 (optional peer, extras "bench")
    except ImportError:
        assert "faster-coco-eval: not installed" in r.output
    else:
        assert any(line.startswith("faster-coco-eval COCOeval_faster") for line in lines)
        assert any(line.startswith("12 COCO stats, faster-coco-eval vs pycocotools") and "DIFFERENT" not in line
                   for line in lines)


@pytest.mark.parametrize("value", ["1,2", "10,1,100", "0,10,100", "a,b,c", ""])
def test_gdet_eval_bad_max_dets(data, value):
    r = CliRunner().invoke(gdet_main, ["eval", "--data", str(data["coco"]), "--dets", str(data["coco_dets"]),
                                       "--metrics", "coco", "--max-dets", value])
    assert r.exit_code == 1
    assert r.output.splitlines() == [f"error: --max-dets: expected three increasing positive integers like "
                                     f"1,10,100, got {value!r}"]
