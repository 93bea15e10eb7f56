"""Detector inference: end-to-end detect on a random-init tiny model, ensembles, checkpoints, the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gdet.data.synth import CLASS_NAMES
from gdet.detection import EnsembleDetector, build_detector, load_detector
from gdet.detection.model import export_detector
from gdet.errors import CheckpointError, GdetError
from helpers_detection import CLASSES, save_detector, tiny_detector

IMAGE = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
PROPS = torch.tensor([[0, 0, 20, 20], [2, 2, 22, 22], [30, 10, 60, 40], [10, 30, 40, 47.0]])


def test_detect_end_to_end_matches_manual_pipeline():
    model = tiny_detector()
    dets = model.detect(IMAGE, PROPS, score_thr=0.0, nms_thr=0.3, max_dets=100)
    assert set(dets) == {"boxes", "scores", "labels"}
    assert dets["boxes"].shape[1] == 4 and dets["labels"].dtype == torch.int64
    assert torch.all(dets["scores"][:-1] >= dets["scores"][1:])
    # the scores are the softmax of the network on the warped crops
    probs, deltas = model.score_regions(torch.from_numpy(IMAGE).permute(2, 0, 1).float() / 255, PROPS)
    assert deltas is None and probs.shape == (4, 3)
    assert torch.allclose(probs.sum(1), torch.ones(4))
    from gdet.detection.crops import crop_regions

    crops = crop_regions(model.normalize(torch.from_numpy(IMAGE).permute(2, 0, 1).float() / 255), PROPS, 32, 2)
    with torch.no_grad():
        manual = torch.softmax(model.backbone(crops), 1)
    assert torch.allclose(probs, manual, atol=1e-5)
    top = dets["scores"].max().item()
    assert top == pytest.approx(probs[:, 1:].max().item(), abs=1e-6)


def test_detect_empty_proposals_and_chunks_agree():
    model = tiny_detector()
    empty = model.detect(IMAGE, torch.zeros((0, 4)))
    assert empty["boxes"].shape == (0, 4) and empty["scores"].numel() == 0
    img = torch.rand(3, 40, 40)
    full = model.score_regions(img, PROPS)[0]
    model.chunk_size = 3  # 4 proposals in chunks of 3 and 1
    assert torch.allclose(model.score_regions(img, PROPS)[0], full, atol=1e-6)


def test_ensemble_averages_probabilities_before_nms():
    a, b = tiny_detector(seed=0), tiny_detector(seed=1)
    img = torch.from_numpy(IMAGE).permute(2, 0, 1).float() / 255
    pa, pb = a.score_regions(img, PROPS)[0], b.score_regions(img, PROPS)[0]
    ens = EnsembleDetector([a, b])
    pe, _ = ens.score_regions(img, PROPS)
    assert torch.allclose(pe, (pa + pb) / 2, atol=1e-6)
    dets = ens.detect(IMAGE, PROPS, score_thr=0.0, nms_thr=1.0, max_dets=100)
    # with NMS off every (box, class) pair survives with the averaged probability
    assert len(dets["scores"]) == 4 * 2
    assert sorted(dets["scores"].tolist()) == pytest.approx(sorted(pe[:, 1:].flatten().tolist()), abs=1e-6)
    other = tiny_detector(num_classes=3)
    with pytest.raises(GdetError, match=r"^detector 2: its classes differ from detector 1's"):
        EnsembleDetector([a, other])


def test_checkpoint_round_trip_and_fp16_export(tmp_path):
    model = tiny_detector()
    path = save_detector(model, tmp_path / "det.pth")
    loaded = load_detector(path)
    img = torch.rand(3, 40, 50)
    assert torch.allclose(loaded.score_regions(img, PROPS)[0], model.score_regions(img, PROPS)[0], atol=1e-6)
    size = export_detector(path, tmp_path / "det16.pth")
    assert size < path.stat().st_size
    half = load_detector(tmp_path / "det16.pth")
    assert torch.allclose(half.score_regions(img, PROPS)[0], model.score_regions(img, PROPS)[0], atol=2e-2)
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "junk.pth")


def test_build_from_classification_checkpoint(tmp_path):
    from gdet.backbones import build_backbone
    from gdet.engine import save_checkpoint

    cls = build_backbone("googlenet", num_classes=5, aux_logits=True)
    save_checkpoint({"model": cls.state_dict(), "task": "classify"}, tmp_path / "cls.pth")
    det = build_detector("googlenet", CLASSES, weights=tmp_path / "cls.pth", backbone_kwargs={"aux_logits": True},
                         input_size=32, bbox_reg=True)
    assert det.backbone.fc.out_features == 3 and det.backbone.aux1.fc2.out_features == 3
    assert torch.equal(det.backbone.conv1.conv.weight, cls.conv1.conv.weight)
    det.train()
    out = det(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 3) and len(out.aux_logits) == 2 and out.bbox_deltas.shape == (2, 2, 4)
    # a detection checkpoint is not a classification checkpoint, and vice versa
    with pytest.raises(CheckpointError):
        load_detector(tmp_path / "cls.pth")


def test_cli_detect_table_png_json_and_bad_checkpoint(tmp_path):
    import cv2

    from gdet.cli import main

    img_path = tmp_path / "scene.png"
    cv2.imwrite(str(img_path), IMAGE)
    ckpt = save_detector(tiny_detector(), tmp_path / "det.pth")
    from gdet.proposals import ProposalSet, save_proposals

    save_proposals(tmp_path / "p.npz", ProposalSet.from_lists(["scene"], [PROPS], [torch.ones(4)]))
    runner = CliRunner()
    res = runner.invoke(main, ["detect", "--image", str(img_path), "--weights", str(ckpt), "--weights", str(ckpt),
                               "--proposals", str(tmp_path / "p.npz"), "--score-thr", "0", "--out",
                               str(tmp_path / "out"), "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    assert "scene.png" in res.output and "detection(s)" in res.output and "synthetic shapes" not in res.output
    assert (tmp_path / "out" / "scene.png").stat().st_size > 0
    entries = json.loads((tmp_path / "d.json").read_text())
    assert entries and {e["image_id"] for e in entries} == {"scene"}
    assert all(set(e) == {"image_id", "category_id", "bbox", "score"} and e["category_id"] in CLASSES
               for e in entries)
    # the library's numbers (cv2 wrote IMAGE as BGR; an ensemble of one model twice is that model)
    ref = tiny_detector().detect(IMAGE[:, :, ::-1], PROPS, score_thr=0.0, nms_thr=0.3, max_dets=100)
    assert [round(e["score"], 5) for e in entries] == [round(v, 5) for v in ref["scores"].tolist()]
    # bad checkpoint: one line, non-zero exit
    (tmp_path / "bad.pth").write_text("garbage")
    res = runner.invoke(main, ["detect", "--image", str(img_path), "--weights", str(tmp_path / "bad.pth")])
    assert res.exit_code == 1
    assert res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["detect", "--image", str(tmp_path / "none.jpg"), "--weights", str(ckpt),
                               "--proposals", str(tmp_path / "p.npz")])
    assert res.exit_code == 1 and "none.jpg" in res.output


def test_cli_detect_passes_proposal_options(tmp_path):
    """`--opt` reaches the proposal method: with NMS off, every kept proposal gives one detection per class."""
    from gdet.cli import main

    root = Path(__file__).resolve().parents[1] / "gdet" / "assets"
    base = ["detect", "--image", str(root / "sample.jpg"), "--weights", str(root / "detector_synth_fp16.pth"),
            "--proposals", "multibox", "--proposal-weights", str(root / "multibox_synth_fp16.pth"),
            "--score-thr", "0", "--nms-iou", "1", "--max-dets", "100000", "--device", "cpu"]
    counts = []
    for opts in (["--opt", "top_k=3"], ["--opt", "top_k=7", "--opt", "tiles=2"]):
        res = CliRunner().invoke(main, base + opts + ["--json", str(tmp_path / "d.json")])
        assert res.exit_code == 0, res.output
        assert res.stderr.count("trained on synthetic shapes only") == 1  # the shipped weights say what they know
        counts.append(len(json.loads((tmp_path / "d.json").read_text())))
    assert counts == [3 * len(CLASS_NAMES), 7 * len(CLASS_NAMES)]
    res = CliRunner().invoke(main, base + ["--opt", "tiles=x"])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "tiles" in res.output
    res = CliRunner().invoke(main, base[:-8] + ["--proposal-weights", str(root / "nope.pth")])
    assert res.exit_code == 1 and "nope.pth" in res.output


def test_cli_detect_refuses_bad_proposal_options_in_one_line(tmp_path):
    """Proposal options are checked before the proposal workers start (one line, exit code 1); MultiBox's input size
    comes from its checkpoint; a .npy array named .npz is not a proposal file."""
    from gdet.cli import main

    root = Path(__file__).resolve().parents[1] / "gdet" / "assets"
    base = ["detect", "--image", str(root / "sample.jpg"), "--weights", str(root / "detector_synth_fp16.pth"),
            "--device", "cpu"]
    mb = ["--proposals", "multibox", "--proposal-weights", str(root / "multibox_synth_fp16.pth")]
    for extra, line in (
            (["--opt", "max_side=-5", "--workers", "2"],
             "--opt max_side: must be an integer in [0, 16384] or null, got -5"),
            (["--opt", "max_boxes=abc", "--workers", "2"],
             "--opt max_boxes: must be a positive integer or null, got 'abc'"),
            (["--proposals", "ss_quality", "--opt", "superpixel_scale=.nan"],
             "--opt superpixel_scale: must be a positive number, got nan"),
            ([*mb, "--opt", "top_k=-1"], "--opt top_k: must be a positive integer, got -1"),
            ([*mb, "--opt", "input_size=320"],
             "--opt input_size: cannot be set: the MultiBox checkpoint sets it (the input size it was trained at)"),
            ([*mb, "--opt", "tile_overlap=1"], "--opt tile_overlap: must be a number in [0, 1), got 1")):
        res = CliRunner().invoke(main, base + extra)
        assert res.exit_code == 1 and res.stderr == f"error: {line}\n", (extra, res.output)
    np.save(tmp_path / "a.npy", np.zeros((2, 4), np.float32))
    (tmp_path / "a.npy").rename(tmp_path / "p.npz")
    res = CliRunner().invoke(main, base + ["--proposals", str(tmp_path / "p.npz")])
    assert res.exit_code == 1
    assert res.stderr == f"error: {tmp_path / 'p.npz'}: not a proposal file (a .npy array, not an .npz archive)\n"
    # A good value still works, with the workers.
    res = CliRunner().invoke(main, base + ["--opt", "max_side=96", "--opt", "max_boxes=20", "--workers", "1",
                                           "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    assert isinstance(json.loads((tmp_path / "d.json").read_text()), list)


def test_export_classifier_loads_in_gdet_classify(tmp_path):
    from gdet.backbones import build_backbone
    from gdet.classification.model import load_classifier
    from gdet.export.checkpoint import export_checkpoint
    from gdet.engine import save_checkpoint

    net = build_backbone("googlenet", num_classes=4, aux_logits=True)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_checkpoint({"model": net.state_dict(), "ema": ema, "optimizer": {}, "task": "classify",
                     "class_names": list("abcd"), "backbone": "googlenet", "backbone_kwargs": {"aux_logits": True},
                     "preprocessing": {**net.preprocessing(), "input_size": 48}}, tmp_path / "cls.pth")
    size = export_checkpoint(tmp_path / "cls.pth", tmp_path / "cls16.pth")
    assert size < (tmp_path / "cls.pth").stat().st_size / 2
    clf = load_classifier(tmp_path / "cls16.pth")
    assert clf.input_size == 48 and clf.class_names == list("abcd")
    w = clf.model.conv1.conv.weight
    assert torch.allclose(w, ema["conv1.conv.weight"].half().float())  # the averaged weights, in fp16
    with pytest.raises(CheckpointError):
        export_checkpoint(tmp_path / "nope.pth", tmp_path / "x.pth")


def test_one_colour_per_class_in_ground_truth_and_detection_pictures():
    from gdet.data.browse import draw_record
    from gdet.detection.visualize import draw_detections
    from gdet.structures import ImageRecord

    black = np.zeros((60, 80, 3), np.uint8)
    names = [f"c{i}" for i in range(6)]
    for label in range(6):
        box = torch.tensor([[10.0, 20, 50, 55]])
        gt = draw_record(black, ImageRecord("x", "x.png", 80, 60, box, torch.tensor([label])), names)
        det = draw_detections(black, {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([label])},
                              names)
        assert gt[40, 10].tolist() == det[40, 10].tolist() != [0, 0, 0], label  # the left edge, below the tag


def _shared_twin(model, scales=(48,), max_size=64):
    """A shared-mode detector on a copy of ``model``'s weights (background + 2 classes, 32 px crops)."""
    from gdet.backbones import build_backbone
    from gdet.detection.model import Detector

    net = build_backbone("googlenet", num_classes=3, aux_logits=False)
    twin = Detector(net, CLASSES, context_pad=2, input_size=32, mode="shared",
                    shared={"scales": list(scales), "max_size": max_size}).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def test_shared_mode_round_trip_ensemble_and_old_files(tmp_path):
    from gdet.detection.shared import SharedDetectorNet
    from gdet.engine import load_checkpoint, save_checkpoint

    rcnn = tiny_detector()
    shared = _shared_twin(rcnn)
    assert set(shared.state_dict()) == set(rcnn.state_dict())  # one checkpoint layout for both modes
    assert shared.describe_mode() == "shared (scales [48], max 64, stage inception4e, pooled 2)"
    img = torch.rand(3, 40, 50)
    # Reference: the shared network built directly on the R-CNN detector's own modules.
    ref = SharedDetectorNet.from_detector(rcnn, scales=(48,), max_size=64).score_regions(img, PROPS)[0]
    got = shared.score_regions(img, PROPS)[0]
    assert torch.allclose(got, ref, atol=1e-6)
    assert not torch.allclose(got, rcnn.score_regions(img, PROPS)[0], atol=1e-3)  # a different computation

    path = save_detector(shared, tmp_path / "shared.pth")
    loaded = load_detector(path)
    assert loaded.mode == "shared" and loaded.shared_settings() == shared.shared_settings()
    assert torch.allclose(loaded.score_regions(img, PROPS)[0], got, atol=1e-6)
    # Members of different modes average their probabilities.
    ens = EnsembleDetector([rcnn, loaded])
    assert torch.allclose(ens.score_regions(img, PROPS)[0], (rcnn.score_regions(img, PROPS)[0] + got) / 2, atol=1e-6)
    assert ens.describe_mode().startswith("1: rcnn") and "2: shared (scales [48]" in ens.describe_mode()

    # A file from before the mode field is an R-CNN detector; an unknown mode is a one-line error.
    ck = load_checkpoint(path)
    del ck["detector"]["mode"], ck["detector"]["shared"]
    save_checkpoint(ck, tmp_path / "old.pth")
    assert load_detector(tmp_path / "old.pth").mode == "rcnn"
    ck["detector"]["mode"] = "fast"
    save_checkpoint(ck, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="odd.pth: unknown detector mode 'fast'"):
        load_detector(tmp_path / "odd.pth")
    from gdet.backbones import build_backbone
    from gdet.detection.model import Detector

    with pytest.raises(GdetError, match="aux_logits: false"):
        Detector(build_backbone("googlenet", num_classes=3, aux_logits=True), CLASSES, mode="shared")


def test_cli_detect_shows_the_mode(tmp_path):
    import cv2

    from gdet.cli import main
    from gdet.proposals import ProposalSet, save_proposals

    cv2.imwrite(str(tmp_path / "scene.png"), IMAGE)
    save_proposals(tmp_path / "p.npz", ProposalSet.from_lists(["scene"], [PROPS], [torch.ones(4)]))
    rcnn = save_detector(tiny_detector(), tmp_path / "rcnn.pth")
    shared = save_detector(_shared_twin(tiny_detector()), tmp_path / "shared.pth")
    args = ["detect", "--image", str(tmp_path / "scene.png"), "--proposals", str(tmp_path / "p.npz"),
            "--score-thr", "0", "--device", "cpu"]
    res = CliRunner().invoke(main, [*args, "--weights", str(shared)])
    assert res.exit_code == 0, res.output
    assert "mode: shared (scales [48], max 64, stage inception4e, pooled 2)" in res.output.splitlines()
    res = CliRunner().invoke(main, [*args, "--weights", str(rcnn), "--weights", str(shared)])
    assert res.exit_code == 0, res.output
    assert "mode: 1: rcnn (warped crops, whole network per region); 2: shared (scales [48]" in res.output


def _detect_scene(tmp_path):
    """A scene image and its proposal file for ``gdet detect``; returns the command's common arguments and a
    runner ``dets(*extra) -> (output, detections)`` that asserts success."""
    import cv2

    from gdet.cli import main
    from gdet.proposals import ProposalSet, save_proposals

    cv2.imwrite(str(tmp_path / "scene.png"), IMAGE)
    save_proposals(tmp_path / "p.npz", ProposalSet.from_lists(["scene"], [PROPS], [torch.ones(4)]))
    args = ["detect", "--image", str(tmp_path / "scene.png"), "--proposals", str(tmp_path / "p.npz"),
            "--score-thr", "0", "--device", "cpu"]

    def dets(*extra):
        out = tmp_path / f"d{len(list(tmp_path.glob('d*.json')))}.json"
        res = CliRunner().invoke(main, [*args, *extra, "--json", str(out)])
        assert res.exit_code == 0, res.output
        return res.output, json.loads(out.read_text())

    return args, dets


def _same_detections(got, want):
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert g["category_id"] == w["category_id"] and g["bbox"] == pytest.approx(w["bbox"], abs=1e-3)
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)


def test_cli_scales_set_a_shared_detectors_pyramid(tmp_path):
    """``--scales``/``--max-size`` give a shared-mode checkpoint another pyramid at inference: the detections equal
    those of a checkpoint saved with that pyramid. Without a shared-mode detector they are a one-line error."""
    from gdet.cli import main

    args, dets = _detect_scene(tmp_path)
    base = tiny_detector()
    shared = save_detector(_shared_twin(base), tmp_path / "shared.pth")  # scales [48], max 64
    ref_path = save_detector(_shared_twin(base, scales=(24, 96), max_size=128), tmp_path / "ref.pth")
    text, got = dets("--weights", str(shared), "--scales", "24,96", "--max-size", "128")
    assert "mode: shared (scales [24, 96], max 128, stage inception4e, pooled 2)" in text.splitlines()
    _, want = dets("--weights", str(ref_path))
    _, plain = dets("--weights", str(shared))
    _same_detections(got, want)
    assert [d["score"] for d in plain] != pytest.approx([d["score"] for d in got], abs=1e-4)  # the option acts

    rcnn = save_detector(base, tmp_path / "rcnn.pth")
    for extra, needle in ((["--weights", str(rcnn), "--scales", "300"], "error: --scales: sets a shared-mode "
                           "detector's pyramid, but " + str(rcnn) + " is an rcnn-mode detector"),
                          (["--weights", str(rcnn), "--max-size", "300"], "error: --max-size: sets a shared-mode"),
                          (["--weights", str(shared), "--scales", "0,600"],
                           "error: --scales: expected a comma list of positive integers, got '0,600'"),
                          (["--weights", str(shared), "--scales", "24,200", "--max-size", "128"],
                           "error: --scales: 200 is above --max-size 128, so no image is rescaled to it"),
                          (["--weights", str(shared), "--scales", "24,200"],
                           f"error: {shared}: shared detection: scale 200 is above max_size 64")):
        res = CliRunner().invoke(main, [*args, *extra])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and needle in res.output, res.output


def test_cli_mode_runs_the_same_weights_in_the_other_mode(tmp_path):
    """``--mode`` scores a checkpoint's weights in the other mode: an R-CNN checkpoint with ``--mode shared`` detects
    as a shared-mode checkpoint of the same weights does, and a shared-mode one with ``--mode rcnn`` as the R-CNN
    checkpoint does."""
    from gdet.cli import main

    args, dets = _detect_scene(tmp_path)
    base = tiny_detector()
    rcnn = save_detector(base, tmp_path / "rcnn.pth")
    shared = save_detector(_shared_twin(base, scales=(24, 96), max_size=128), tmp_path / "shared.pth")
    text, as_shared = dets("--weights", str(rcnn), "--mode", "shared", "--scales", "24,96", "--max-size", "128")
    assert "mode: shared (scales [24, 96], max 128, stage inception4e, pooled 2)" in text.splitlines()
    _, want_shared = dets("--weights", str(shared))
    _same_detections(as_shared, want_shared)
    text, as_rcnn = dets("--weights", str(shared), "--mode", "rcnn")
    assert "mode: rcnn (warped crops, whole network per region)" in text.splitlines()
    _, want_rcnn = dets("--weights", str(rcnn))
    _same_detections(as_rcnn, want_rcnn)
    assert [d["score"] for d in as_rcnn] != pytest.approx([d["score"] for d in as_shared], abs=1e-4)
    # Without --scales an R-CNN checkpoint runs at shared mode's default pyramid.
    assert "mode: shared (scales [600], max 1000" in dets("--weights", str(rcnn), "--mode", "shared")[0]

    for extra, needle in ((["--weights", str(shared), "--mode", "rcnn", "--scales", "300"],
                           "error: --scales: sets shared mode's image pyramid, but --mode rcnn scores warped crops"),
                          (["--weights", str(rcnn), "--scales", "300"], "(add --mode shared to run it in shared mode)"),
                          (["--weights", str(rcnn), "--mode", "fast"], "error: --mode: 'fast' is not one of 'rcnn', 'shared'")):
        res = CliRunner().invoke(main, [*args, *extra])
        assert res.exit_code != 0 and needle in res.output, res.output
    with pytest.raises(GdetError, match="mode: 'fast' is not a detector mode"):
        load_detector(rcnn, mode="fast")


def test_frozen_bn_keeps_running_statistics_in_both_modes():
    """Batch norm uses batch statistics while a detector trains (both modes) unless ``frozen_bn``: then it stays in
    eval mode and the loaded running statistics are untouched (``trunk``: only the shared trunk's); the trainer's
    key must be a boolean or ``trunk`` in shared mode."""
    from torch import nn

    from gdet.backbones import build_backbone
    from gdet.detection.model import Detector
    from gdet.detection.train import check
    from gdet.errors import ConfigError, GdetError

    def bn_modes(det):
        return {m.training for m in det.backbone.modules() if isinstance(m, nn.BatchNorm2d)}

    def shared_det():
        return Detector(build_backbone("googlenet_tv", num_classes=3, aux_logits=False), CLASSES, input_size=32,
                        mode="shared", shared={"scales": [48], "max_size": 64})

    image, box = torch.rand(1, 3, 48, 48), [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 5.0, 40.0, 44.0]])]
    live = shared_det().train()
    assert bn_modes(live) == {True}
    before = live.backbone.conv1.bn.running_mean.clone()
    live(image, box)
    assert not torch.equal(before, live.backbone.conv1.bn.running_mean)
    frozen = shared_det()
    frozen.frozen_bn = True
    frozen.train()
    assert frozen.training and frozen.backbone.inception5b.training and bn_modes(frozen) == {False}
    before = frozen.backbone.conv1.bn.running_mean.clone()
    frozen(image, box)
    assert torch.equal(before, frozen.backbone.conv1.bn.running_mean)
    # "trunk": the stages that run once per image keep their statistics, the per-region stages train theirs.
    trunk = shared_det()
    trunk.frozen_bn = "trunk"
    trunk.train()
    bb = trunk.backbone
    assert not bb.conv1.bn.training and not bb.inception4e.branch1.bn.training
    assert bb.inception5a.branch1.bn.training and bb.inception5b.branch4[1].bn.training
    before = {n: bb.get_submodule(n).running_mean.clone() for n in ("conv1.bn", "inception4e.branch1.bn",
                                                                     "inception5a.branch1.bn")}
    out = trunk(image, box)
    after = {n: bb.get_submodule(n).running_mean for n in before}
    assert torch.equal(before["conv1.bn"], after["conv1.bn"])
    assert torch.equal(before["inception4e.branch1.bn"], after["inception4e.branch1.bn"])
    assert not torch.equal(before["inception5a.branch1.bn"], after["inception5a.branch1.bn"])
    out.logits.sum().backward()  # the frozen layers' affine parameters still learn
    assert bb.conv1.bn.weight.grad is not None and bb.conv1.bn.weight.grad.abs().sum() > 0
    rcnn = Detector(build_backbone("googlenet_tv", num_classes=3, aux_logits=False), CLASSES, input_size=32).train()
    assert bn_modes(rcnn) == {True}
    rcnn.frozen_bn = "trunk"
    with pytest.raises(GdetError, match="shared mode"):
        rcnn.train()
    with pytest.raises(ConfigError, match="frozen_bn"):
        check({"data": "x", "frozen_bn": "yes"})
    with pytest.raises(ConfigError, match="frozen_bn: trunk is for mode: shared"):
        check({"data": "x", "frozen_bn": "trunk"})
    assert check({"data": "x", "frozen_bn": "trunk", "mode": "shared", "aux_logits": False})["frozen_bn"] == "trunk"
    with pytest.raises(ConfigError, match="train_pyramid"):
        check({"data": "x", "train_pyramid": 1})
    with pytest.raises(ConfigError, match="pool_context"):
        check({"data": "x", "pool_context": "yes"})
