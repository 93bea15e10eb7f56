"""gdet demo: sample image -> PNG + JSON, mAP on a generated val split (tiny random detector); missing weights."""
import json

import torch
from click.testing import CliRunner

from gdet.backbones import build_backbone
from gdet.data.synth import CLASS_NAMES
from gdet.detection.model import Detector
from helpers_detection import save_detector

PINNED_VOC_MAP = 0.011111  # = 1/90
PINNED_COCO_AP = 0.008889


def test_demo_runs_and_reports_map(tmp_path):
    from gdet.cli import main

    torch.manual_seed(0)
    det = Detector(build_backbone("googlenet", num_classes=len(CLASS_NAMES) + 1, aux_logits=False), CLASS_NAMES,
                   input_size=32, context_pad=2)
    ckpt = save_detector(det, tmp_path / "det.pth")
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--weights", str(ckpt), "--out", str(out), "--val-images", "2",
                                    "--max-proposals", "20", "--score-thr", "0.0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "mAP on 2 generated val images: VOC 2010+" in res.output
    # The same names as `gdet detect --out OUT --json OUT/detections.json`.
    assert (out / "sample.png").stat().st_size > 0
    entries = json.loads((out / "detections.json").read_text())
    assert entries and set(entries[0]) == {"image_id", "category_id", "bbox", "score"}
    assert {e["image_id"] for e in entries} == {"sample"} and {e["category_id"] for e in entries} <= set(CLASS_NAMES)
    summary = json.loads((out / "map.json").read_text())
    # Deterministic: generated images (seed 2014), selective search, a seeded random network on the CPU.
    assert summary["val_images"] == 2 and summary["max_proposals"] == 20
    assert round(summary["voc_mAP"], 6) == PINNED_VOC_MAP
    assert round(summary["coco_AP"], 6) == PINNED_COCO_AP
    assert (out / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_missing_weights_is_one_line(tmp_path):
    from gdet.cli import main

    res = CliRunner().invoke(main, ["demo", "--weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1
