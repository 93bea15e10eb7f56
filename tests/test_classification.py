"""Classification: crop geometry (exact), augmentation, ensembles, training (learns, resumes exactly), CLI."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gdet.classification import (Crop, Lighting, TrainTransform, apply_crops, crop_boxes, load_classifier, predict,
                                 train)
from gdet.classification.transforms import PCA_EIGVAL, PCA_EIGVEC
from gdet.cli import main as gdet_main
from gdet.engine import load_checkpoint, save_checkpoint
from gdet.ensemble import average_probabilities, common_classes, crop_probabilities
from gdet.errors import CheckpointError, ConfigError, GdetError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle", "cross"]
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 200, 30)]


def make_shapes(root: Path, per_class: int, size: int = 72, seed: int = 0):
    """A tiny 4-class image folder: one coloured shape on a noisy background per image."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for k, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = (rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)
                cx, cy = (int(v) for v in rng.integers(size // 3, 2 * size // 3, 2))
                r = int(rng.integers(size // 6, size // 3))
                col = tuple(int(c) for c in np.clip(np.array(COLOURS[k]) + rng.integers(-30, 30, 3), 0, 255))
                if name == "circle":
                    cv2.circle(img, (cx, cy), r, col, -1)
                elif name == "square":
                    cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), col, -1)
                elif name == "triangle":
                    cv2.fillPoly(img, [np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)], col)
                else:
                    cv2.line(img, (cx - r, cy), (cx + r, cy), col, max(2, r // 3))
                    cv2.line(img, (cx, cy - r), (cx, cy + r), col, max(2, r // 3))
                cv2.imwrite(str(d / f"{i:03d}.jpg"), img[:, :, ::-1])
    return root


# ---------------------------------------------------------------- crop geometry

def _ref_144(w, h, c=224):
    """Independent spelling of the paper's 144 crops: explicit loops, explicit rounding."""
    out = []
    for scale in (256, 288, 320, 352):
        s = round(scale * c / 224)
        if w <= h:
            rw, rh = s, int(h * s / w + 0.5)
        else:
            rw, rh = int(w * s / h + 0.5), s
        if rw >= rh:
            origins = [(0, 0), ((rw - s) // 2, 0), (rw - s, 0)]
        else:
            origins = [(0, 0), (0, (rh - s) // 2), (0, rh - s)]
        for ox, oy in origins:
            regions = [(ox, oy, c), (ox + s - c, oy, c), (ox, oy + s - c, c), (ox + s - c, oy + s - c, c),
                       (ox + (s - c) // 2, oy + (s - c) // 2, c), (ox, oy, s)]
            for x, y, side in regions:
                for flip in (False, True):
                    out.append(((rh, rw), (x, y, x + side, y + side), flip))
    return out


@pytest.mark.parametrize("w,h", [(400, 300), (300, 400), (256, 256), (500, 333)])
def test_144_crops_match_reference(w, h):
    crops = crop_boxes(w, h, 144)
    assert len(crops) == 144 == 4 * 3 * 6 * 2
    assert [tuple(c) for c in crops] == _ref_144(w, h)
    for c in crops:
        (rh, rw), (x1, y1, x2, y2) = c.resized, c.box
        assert 0 <= x1 < x2 <= rw and 0 <= y1 < y2 <= rh and x2 - x1 == y2 - y1
        assert min(rh, rw) in (256, 288, 320, 352)


def test_144_crops_known_boxes_landscape():
    crops = crop_boxes(400, 300, 144)
    # scale 256: image resized to 341 x 256; squares at x = 0, 42, 85
    assert crops[0] == Crop((256, 341), (0, 0, 224, 224), False) and crops[1].flip
    centre_square = [c.box for c in crops[12:24:2]]
    assert centre_square == [(42, 0, 266, 224), (74, 0, 298, 224), (42, 32, 266, 256), (74, 32, 298, 256),
                             (58, 16, 282, 240), (42, 0, 298, 256)]
    assert crops[34].box == (85, 0, 341, 256)  # right square, resized whole
    assert crops[-2] == Crop((352, 469), (117, 0, 469, 352), False)
    # portrait: top / centre / bottom squares
    p = crop_boxes(300, 400, 144)
    assert p[10].box == (0, 0, 256, 256) and p[22].box == (0, 42, 256, 298) and p[34].box == (0, 85, 256, 341)


def test_10_and_1_crop_and_scaling():
    ten = crop_boxes(300, 400, 10)  # portrait: 256 x 341
    assert len(ten) == 10 and {c.resized for c in ten} == {(341, 256)}
    assert [c.box for c in ten[::2]] == [(0, 0, 224, 224), (32, 0, 256, 224), (0, 117, 224, 341),
                                         (32, 117, 256, 341), (16, 58, 240, 282)]
    assert [c.flip for c in ten] == [False, True] * 5
    assert crop_boxes(300, 400, 1) == [Crop((341, 256), (16, 58, 240, 282), False)]
    small = crop_boxes(200, 100, 144, input_size=112)  # every length x 112/224
    assert sorted({min(c.resized) for c in small}) == [128, 144, 160, 176]
    assert {c.box[2] - c.box[0] for c in small} == {112, 128, 144, 160, 176}
    assert crop_boxes(100, 100, 1, input_size=112) == [Crop((128, 128), (8, 8, 120, 120), False)]
    with pytest.raises(Exception, match="1, 10 or 144"):
        crop_boxes(10, 10, 12)


def test_apply_crops_cuts_the_pixels():
    img = torch.arange(3 * 256 * 320, dtype=torch.float32).view(3, 256, 320)  # shorter side already 256
    crops = crop_boxes(320, 256, 10)
    out = apply_crops(img, crops)
    assert out.shape == (10, 3, 224, 224)
    for c, patch in zip(crops, out):
        x1, y1, x2, y2 = c.box
        ref = img[:, y1:y2, x1:x2]
        assert torch.equal(patch, ref.flip(-1) if c.flip else ref)
    u8 = apply_crops(torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8), crop_boxes(120, 90, 144, 64), 64)
    assert u8.shape == (144, 3, 64, 64) and u8.dtype == torch.uint8


# ---------------------------------------------------------------- augmentation and ensembles

def test_train_crop_params_respect_area_and_aspect():
    t = TrainTransform(64)
    shares, ratios = [], []
    for _ in range(400):
        top, left, h, w = t.crop_params(300, 400)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        shares.append(h * w / (300 * 400))
        ratios.append(w / h)
    assert min(shares) >= 0.07 and max(shares) <= 1.0 and np.mean(shares) > 0.3
    assert min(ratios) >= 0.74 and max(ratios) <= 1.35
    out = t(np.full((50, 70, 3), 128, np.uint8))
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8


def test_lighting_adds_pca_offset():
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.1
    torch.manual_seed(3)
    out = Lighting(0.1)(torch.full((3, 4, 4), 0.5))
    ref = 0.5 + PCA_EIGVEC @ (alpha * PCA_EIGVAL)
    assert torch.allclose(out[:, 0, 0], ref, atol=1e-6)


def test_ensemble_averaging():
    a, b = torch.tensor([[0.2, 0.8]]), torch.tensor([[0.6, 0.4]])
    assert torch.allclose(average_probabilities([a, b]), torch.tensor([[0.4, 0.6]]))
    assert torch.allclose(average_probabilities([a, b], [3, 1]), 0.75 * a + 0.25 * b)
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])  # two crops of one image
    assert torch.allclose(crop_probabilities(logits, 2), torch.tensor([[0.625, 0.375]]))
    with pytest.raises(Exception, match="weights"):
        average_probabilities([a, b], [1])


def test_ensemble_members_must_share_one_label_set():
    assert common_classes([("a.pth", ["cat", "dog"]), ("b.pth", ("cat", "dog"))]) == ["cat", "dog"]
    # probabilities are averaged class by class: another order is another label set
    with pytest.raises(GdetError, match=r"^b\.pth: its classes differ from a\.pth's \(the same classes in another"):
        common_classes([("a.pth", ["cat", "dog"]), ("b.pth", ["dog", "cat"])])
    with pytest.raises(GdetError, match=r"^c\.pth: .*\(classes bird, dog are in one and not the other\)"):
        common_classes([("a.pth", ["cat", "dog"]), ("b.pth", ["cat", "dog"]), ("c.pth", ["cat", "bird"])])
    with pytest.raises(GdetError, match="no member"):
        common_classes([])


def test_ensemble_prediction_is_the_mean_of_its_members():
    """predict() with two networks = the average of each network's own (crop-averaged) probabilities."""
    from gdet.backbones import build_backbone
    from gdet.classification.model import Classifier

    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(Classifier(build_backbone("googlenet", num_classes=4, aux_logits=False).eval(), CLASSES, 48))
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    alone = [dict(predict([image], [m], crops=10, topk=4)[0]) for m in members]
    both = dict(predict([image], members, crops=10, topk=4)[0])
    assert set(both) == set(CLASSES) and alone[0] != alone[1]
    for c in CLASSES:
        assert both[c] == pytest.approx((alone[0][c] + alone[1][c]) / 2, abs=1e-6)
    weighted = dict(predict([image], members, crops=10, topk=4, weights=[3, 1])[0])
    for c in CLASSES:
        assert weighted[c] == pytest.approx(0.75 * alone[0][c] + 0.25 * alone[1][c], abs=1e-6)


# ---------------------------------------------------------------- training: proof, resume, CLI

def _cfg(data, work, **kw):
    cfg = {"data": str(data), "backbone": "googlenet", "input_size": 64, "epochs": 3, "batch_size": 12,
           "lr": 0.01, "lr_schedule": "constant", "warmup_epochs": 0.5, "weight_decay": 1e-4, "grad_clip": 10.0,
           "workers": 0, "device": "cpu", "work_dir": str(work), "ema_decay": 0.9, "aug_scale": [0.35, 1.0],
           "log_every": 5, "threads": 1}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short CPU run on a tiny 4-class set (chance = 25%), shared by the tests below."""
    base = tmp_path_factory.mktemp("cls")
    torch.manual_seed(0)
    data = make_shapes(base / "data", per_class=24)
    result = train(_cfg(data, base / "run"))
    return base, data, result


def test_training_beats_chance_and_writes_outputs(trained):
    base, data, result = trained
    work = base / "run"
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    best = max(max(r["val_acc1"], r["ema_val_acc1"]) for r in rows)
    assert best >= 0.6, rows  # chance is 0.25
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for f in ("last.pth", "best.pth", "curves.png", "config.yaml"):
        assert (work / f).is_file(), f
    ck = load_checkpoint(work / "best.pth")
    assert ck["task"] == "classify" and ck["class_names"] == sorted(CLASSES) and ck["backbone"] == "googlenet"
    assert ck["preprocessing"]["input_size"] == 64 and ck["ema"] is not None and ck["optimizer"] is not None
    assert set(ck["scheduler"]) >= {"last_epoch", "base_lrs"} and ck["rng"] is not None


def test_predict_and_ensemble_api(trained):
    base, data, _ = trained
    m = load_classifier(base / "run" / "best.pth")
    imgs = sorted((data / "val" / "square").glob("*.jpg"))[:2]
    one = predict(imgs, [m], crops=10, topk=3)
    two = predict(imgs, [m, load_classifier(base / "run" / "last.pth", use_ema=False)], crops=1, topk=4)
    assert len(one) == 2 and len(one[0]) == 3 and all(n in CLASSES for n, _ in one[0])
    assert abs(sum(p for _, p in two[0]) - 1.0) < 1e-4  # top-4 of 4 classes: the whole distribution


@pytest.mark.parametrize("loader", ["cpu", "gpu"])
def test_resume_matches_uninterrupted_run(tmp_path, loader, capsys):
    # loader=gpu is the batched decode + augmentation path, run on the CPU here.
    data = make_shapes(tmp_path / "d", per_class=4, size=48)
    (data / "classes.txt").write_text("\n".join(reversed(CLASSES)) + "\n")  # fixes the label order
    kw = dict(batch_size=4, max_steps_per_epoch=2, ema_decay=0.5, input_size=48, loader=loader)
    train(_cfg(data, tmp_path / "straight", epochs=2, **kw))
    train(_cfg(data, tmp_path / "part", epochs=1, **kw))
    train(_cfg(data, tmp_path / "part", epochs=2, resume=str(tmp_path / "part" / "last.pth"), **kw))
    a, b = load_checkpoint(tmp_path / "straight" / "last.pth"), load_checkpoint(tmp_path / "part" / "last.pth")
    assert a["epoch"] == b["epoch"] == 2 and a["class_names"] == CLASSES[::-1]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    rows = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    if loader == "cpu":  # without validation, a resume that changes what the loss measures restarts best.pth
        train(_cfg(data, tmp_path / "part", epochs=3, eval_every=0, resume=str(tmp_path / "part" / "last.pth"), **kw))
        capsys.readouterr()
        train(_cfg(data, tmp_path / "part", epochs=4, eval_every=0, label_smoothing=0.2,
                   resume=str(tmp_path / "part" / "last.pth"), **kw))
        out = capsys.readouterr().out
        assert "label_smoothing 0.0 → 0.2 changes what the training loss measures; best.pth restarts at epoch 4" in out
        assert load_checkpoint(tmp_path / "part" / "best.pth")["epoch"] == 4
    # A changed label order cannot silently permute the labels of a resumed run.
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with pytest.raises(ConfigError, match="class order differs"):
        train(_cfg(data, tmp_path / "part", epochs=3, resume=str(tmp_path / "part" / "last.pth"), **kw))


def test_start_weights_partial_load_is_refused_unless_asked(tmp_path, capsys):
    from gdet.backbones import build_backbone

    data = make_shapes(tmp_path / "d", per_class=2, size=40)
    torch.save(build_backbone("googlenet_tv", num_classes=1000).state_dict(), tmp_path / "tv.pth")
    kw = dict(epochs=1, batch_size=4, max_steps_per_epoch=1, input_size=40, weights=str(tmp_path / "tv.pth"))
    with pytest.raises(CheckpointError, match=r"tv\.pth: only \d+/128 tensors of GoogLeNet fit .*weights_strict=false"):
        train(_cfg(data, tmp_path / "w", **kw))
    train(_cfg(data, tmp_path / "w", weights_strict=False, **kw))
    assert re.search(r"weights: loaded \d+/128 tensors from .*tv\.pth", capsys.readouterr().out)
    # The same network with another class count: the classifier is re-initialised, everything else loads.
    torch.save(build_backbone("googlenet", num_classes=10).state_dict(), tmp_path / "ten.pth")
    train(_cfg(data, tmp_path / "w2", **{**kw, "weights": str(tmp_path / "ten.pth")}))
    assert "weights: loaded 122/128 tensors" in capsys.readouterr().out


def test_cli_predict_eval_and_bad_inputs(trained, tmp_path):
    base, data, _ = trained
    ck = str(base / "run" / "best.pth")
    runner = CliRunner()
    r = runner.invoke(gdet_main, ["classify", "--image", str(data / "val" / "cross"), "--weights", ck,
                                  "--top-k", "2", "--json", "-", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out) == len(list((data / "val" / "cross").glob("*.jpg"))) and len(out[0]["top"]) == 2
    r = runner.invoke(gdet_main, ["classify", "eval", "--data", str(data / "val"), "--weights", ck, "--weights", ck,
                                  "--crops", "1,144", "--workers", "0", "--limit", "2", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 + 4 and lines[1].split()[:2] == ["1", "1"] and lines[-1].split()[:2] == ["2", "144"]
    # Bad input: one line, non-zero exit.
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    det = tmp_path / "det.pth"
    save_checkpoint({"model": {}, "task": "detect"}, det)
    (tmp_path / "junk.pth").write_text("junk")
    cases = [
        (["classify", "--image", str(tmp_path / "missing.jpg"), "--weights", ck], "image not found"),
        (["classify", "--image", str(tmp_path / "bad.jpg"), "--weights", ck], "cannot decode"),
        (["classify", "--image", str(tmp_path / "bad.jpg"), "--weights", str(det)], "'detect' checkpoint"),
        (["classify", "--image", str(tmp_path / "bad.jpg"), "--weights", str(tmp_path / "junk.pth")], "not a readable"),
        (["classify", "eval", "--data", str(data / "val"), "--weights", ck, "--crops", "1,7"], "1, 10 or 144"),
    ]
    for args, msg in cases:
        r = runner.invoke(gdet_main, args)
        assert r.exit_code == 1 and msg in r.output and r.output.count("\n") == 1, (args, r.output)
    with pytest.raises(CheckpointError, match="'detect' checkpoint"):
        load_classifier(det)


def test_train_tool_and_cli_train(tmp_path):
    data = make_shapes(tmp_path / "d", per_class=2, size=40)
    r = CliRunner().invoke(gdet_main, ["classify", "train", "--config", str(ROOT / "configs" / "cls_synth.yaml"),
                                       f"data={data}", f"work_dir={tmp_path / 'w'}", "epochs=1", "input_size=40",
                                       "batch_size=4", "max_steps_per_epoch=1", "workers=0", "device=cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "w" / "last.pth").is_file() and "best ema_val_acc1" in r.output
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "train_cls.py"), "--config",
                        str(ROOT / "configs" / "cls_synth.yaml"), "epochz=3"], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "unknown key 'epochz'" in p.stderr
    assert p.stderr.count("\n") == 1
