"""Offline fusion of detection sets: concatenate + per-class NMS, and weighted boxes fusion with exact numbers."""
import pytest
import torch

from gdet.detection.fusion import fuse_detections, weighted_boxes_fusion
from gdet.errors import GdetError


def _d(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


A = [_d([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.6], [0, 1])]
B = [_d([[2, 0, 12, 10], [50, 50, 60, 60]], [0.3, 0.8], [0, 0])]


def test_wbf_weighted_mean_and_model_penalty():
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [100, 100, 110, 110]])
    scores = torch.tensor([0.9, 0.3, 0.5])
    b, s = weighted_boxes_fusion(boxes, scores, num_models=2, iou_thr=0.55)
    # cluster 1: IoU(0-10, 2-12) = 80/120 > 0.55 -> x1 = (0*0.9 + 2*0.3)/1.2 = 0.5, x2 = 10.5, score = 0.6 * 2/2
    # cluster 2: one box of two models -> 0.5 * 1/2
    assert torch.allclose(b, torch.tensor([[0.5, 0, 10.5, 10], [100, 100, 110, 110]]))
    assert s.tolist() == pytest.approx([0.6, 0.25])
    e = weighted_boxes_fusion(torch.zeros((0, 4)), torch.zeros(0), 2)
    assert e[0].shape == (0, 4)


def test_fuse_nms_and_wbf_per_class():
    nms = fuse_detections([A, B], "nms", iou_thr=0.3)[0]
    # class 0: the 0.9 box suppresses its 0.3 neighbour; the class-0 box at 50 survives; class 1 kept
    got = sorted(zip(nms["labels"].tolist(), [round(v, 5) for v in nms["scores"].tolist()]))
    assert got == [(0, 0.8), (0, 0.9), (1, 0.6)]
    wbf = fuse_detections([A, B], "wbf")[0]
    assert len(wbf["scores"]) == 3 and torch.all(wbf["scores"][:-1] >= wbf["scores"][1:])
    weighted = fuse_detections([A, B], "nms", weights=[1.0, 0.0])[0]
    assert weighted["scores"].max().item() == pytest.approx(0.9)


def test_fuse_bad_input():
    with pytest.raises(GdetError):
        fuse_detections([A, B + B])
    with pytest.raises(GdetError):
        fuse_detections([A], method="vote")
    with pytest.raises(GdetError):
        fuse_detections([A, B], weights=[1.0])
    for w, problem in (([float("nan"), 1.0], "every weight must be a finite number >= 0, got nan"),
                       ([float("inf"), 1.0], "every weight must be a finite number >= 0, got inf"),
                       ([1.0, -1.0], "every weight must be a finite number >= 0, got -1"),
                       ([0.0, 0.0], "at least one weight must be above 0")):
        with pytest.raises(GdetError, match=f"^fuse: score weights: {problem}"):
            fuse_detections([A, B], weights=w)


def test_fuse_zero_weight_leaves_a_set_out():
    """A set weighted 0 contributes nothing: WBF with two such overlapping boxes gave a NaN box (0 / 0)."""
    z = [_d([[0, 0, 10, 10], [1, 0, 11, 10]], [0.5, 0.4], [0, 0])]
    for method in ("nms", "wbf"):
        got = fuse_detections([A, z], method, weights=[1.0, 0.0])[0]
        want = fuse_detections([A], method)[0]
        assert torch.isfinite(got["boxes"]).all() and torch.isfinite(got["scores"]).all()
        assert all(torch.equal(got[k], want[k]) for k in ("boxes", "scores", "labels"))


def test_gdet_fuse_of_a_file_with_itself_is_exact(tmp_path):
    """A result file fused with itself: NMS keeps one copy of each box and suppresses same-class neighbours over
    the IoU threshold; WBF merges each box with its copy (same box, same score). Exact expected entries."""
    import json

    from click.testing import CliRunner

    from gdet.cli import main
    from helpers_detection import make_voc

    voc = make_voc(tmp_path, n_train=1, n_val=2)
    # im001: two class-1 boxes with IoU 50/150 = 1/3 (over NMS's 0.3, under WBF's 0.55) and one class-2 box;
    # im002: one class-1 box.
    entries = [
        {"image_id": "im001", "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.875},
        {"image_id": "im001", "category_id": 1, "bbox": [5.0, 0.0, 10.0, 10.0], "score": 0.75},
        {"image_id": "im001", "category_id": 2, "bbox": [20.0, 20.0, 8.0, 4.0], "score": 0.5},
        {"image_id": "im002", "category_id": 1, "bbox": [1.5, 2.5, 30.0, 20.0], "score": 0.25},
    ]
    (tmp_path / "a.json").write_text(json.dumps(entries))

    def fuse(method):
        out = tmp_path / f"{method}.json"
        r = CliRunner().invoke(main, ["fuse", str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--data", str(voc),
                                      "--method", method, "--out", str(out), "--metrics", "voc",
                                      "--json", str(tmp_path / f"{method}_m.json")])
        assert r.exit_code == 0, r.output
        return sorted(json.loads(out.read_text()), key=lambda e: (e["image_id"], -e["score"]))

    assert fuse("nms") == [entries[0], entries[2], entries[3]]
    # Score weights that are not finite, negative or all zero: one line, exit code 1, nothing written.
    for weights, line in (("nan,1", "every weight must be a finite number >= 0, got nan in 'nan,1'"),
                          ("inf,1", "every weight must be a finite number >= 0, got inf in 'inf,1'"),
                          ("1,-1", "every weight must be a finite number >= 0, got -1 in '1,-1'"),
                          ("0,0", "at least one weight must be above 0, got '0,0'")):
        r = CliRunner().invoke(main, ["fuse", str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--data", str(voc),
                                      "--score-weights", weights, "--out", str(tmp_path / "w.json")])
        assert r.exit_code == 1 and r.stderr == f"error: --score-weights: {line}\n", r.output
        assert not (tmp_path / "w.json").exists()
    r = CliRunner().invoke(main, ["fuse", str(tmp_path / "a.json"), str(tmp_path / "a.json"), "--data", str(voc),
                                  "--score-weights", "1,0.5", "--out", str(tmp_path / "w.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "w.json").read_text())[0]["score"] == 0.875
    assert fuse("wbf") == [entries[0], entries[1], entries[2], entries[3]]
    metrics = json.loads((tmp_path / "wbf_m.json").read_text())
    assert metrics["inputs"] == [str(tmp_path / "a.json")] * 2 and "mAP" in metrics["voc"]
