"""tools/train_det.py: a few-step smoke run on a tiny VOC set, exact resume, bad config; tools/test_det.py and
tools/fuse_dets.py on its output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdet.data import load_detection_set
from gdet.detection.train import train
from gdet.errors import CheckpointError, ConfigError
from gdet.engine import load_checkpoint
from helpers_detection import make_proposals, make_voc, save_detector, tiny_detector

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    voc = make_voc(root)
    recs = load_detection_set(voc, "train").records + load_detection_set(voc, "val").records
    props = make_proposals(recs, root / "props.npz")
    return root, voc, props


def _cfg(root, voc, props, out, **kw):
    cfg = dict(data=str(voc), proposals=str(props), val_proposals=str(props), input_size=32, context_pad=2,
               batch_size=16, iters_per_epoch=2, epochs=2, device="cpu", work_dir=str(out), lr=0.001,
               aux_logits=True, bbox_reg=True, export_fp16=False, log_every=1)
    cfg.update(kw)  # every other key takes its default
    return cfg


def test_train_resume_is_exact(tiny, capsys):
    root, voc, props = tiny
    # Both runs start from a 5-class classifier (its classifier is replaced by a 3-way one); the resumed half
    # needs its checkpoint only, not the start weights.
    from gdet.backbones import build_backbone

    for name in ("cls_full.pth", "cls_half.pth"):
        torch.manual_seed(7)
        torch.save(build_backbone("googlenet", num_classes=5).state_dict(), root / name)
    full = train(_cfg(root, voc, props, root / "full", weights=str(root / "cls_full.pth"),
                      tensorboard=True))["last"]
    out = capsys.readouterr().out
    assert f"weights: loaded 122/128 tensors from {root / 'cls_full.pth'} (6 classifier-head tensors" in out
    assert {"train_loss", "train_loss_cls", "train_loss_bbox", "train_acc", "train_fg_acc", "train_regions_per_s",
            "val_voc_mAP", "val_voc07_mAP", "val_coco_AP"} <= set(full)
    assert full["train_loss"] == pytest.approx(full["train_loss_cls"] + full["train_loss_bbox"], rel=1e-6)
    rows = [json.loads(x) for x in (root / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (root / "full" / "curves.png").stat().st_size > 0 and (root / "full" / "config.yaml").is_file()
    # TensorBoard: the numbers of every epoch, a few val images with their detections and the PR curves.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root / "full"), size_guidance={"images": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("val/val_voc_mAP")] == pytest.approx([r["val_voc_mAP"] for r in rows])
    assert {"val/pr_curves", "val/detections_0"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("val/pr_curves")] == [1, 2]
    # best.pth holds the epoch of the best val mAP (the first of equals), and last.pth says which one.
    maps = [r["val_voc_mAP"] for r in rows]
    last, best = load_checkpoint(root / "full" / "last.pth"), load_checkpoint(root / "full" / "best.pth")
    assert best["epoch"] == last["best_epoch"] == 1 + maps.index(max(maps)) and last["best_score"] == max(maps)
    # one epoch, then resume for the second: identical weights (evaluation draws no random numbers, so the
    # halves can skip it)
    train(_cfg(root, voc, props, root / "half", epochs=1, eval_every=0, weights=str(root / "cls_half.pth")))
    (root / "cls_half.pth").unlink()
    train(_cfg(root, voc, props, root / "half", resume=str(root / "half" / "last.pth"), eval_every=0,
               weights=str(root / "cls_half.pth")))
    a = load_checkpoint(root / "full" / "last.pth")
    b = load_checkpoint(root / "half" / "last.pth")
    assert a["epoch"] == b["epoch"] == 2 and a["task"] == "detect"
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert (root / "half" / "best.pth").is_file()  # without evaluation the lowest training loss is the best


def test_tools_train_test_fuse_smoke(tiny, tmp_path):
    root, voc, props = tiny
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GDET_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    cfg = tmp_path / "det.yaml"
    cfg.write_text(f"data: {voc}\nproposals: {props}\ninput_size: 32\ncontext_pad: 2\nbatch_size: 8\n"
                   f"iters_per_epoch: 1\nepochs: 1\ndevice: cpu\neval_every: 0\nwork_dir: {out}\naux_logits: false\n")
    r = subprocess.run([sys.executable, "tools/train_det.py", "--config", str(cfg)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ckpt = out / "detector_fp16.pth"
    assert ckpt.is_file()
    dets = tmp_path / "dets.json"
    r = subprocess.run([sys.executable, "tools/test_det.py", "--data", str(voc), "--split", "val", "--weights",
                        str(ckpt), "--proposals", str(props), "--out", str(dets)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "mAP" in r.stdout
    results = json.loads(dets.read_text())
    assert isinstance(results, list) and results and set(results[0]) >= {"image_id", "category_id", "bbox", "score"}
    fused = tmp_path / "fused.json"
    r = subprocess.run([sys.executable, "tools/fuse_dets.py", str(dets), str(dets), "--data", str(voc), "--split",
                        "val", "--method", "nms", "--out", str(fused)], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(fused.read_text())) <= len(results)
    # bad input: one line, non-zero exit
    r = subprocess.run([sys.executable, "tools/train_det.py", "--config", str(cfg), "no_such_key=1"], cwd=ROOT,
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    # (tools/test_det.py's own bad-value path: tests/test_cli.py)


def test_train_shared_mode_resume_is_exact(tiny, capsys):
    """Shared mode through the same engine: image-centric batches (2 images x 8 regions), flips, box regression,
    val mAP through the shared network, a two-scale pyramid in training (train_pyramid); one epoch + resume gives
    the uninterrupted run's weights bit for bit."""
    root, voc, props = tiny
    kw = dict(mode="shared", aux_logits=False, scales=[64, 80], max_size=96, images_per_batch=2, hflip=0.5,
              train_pyramid=True)
    full = train(_cfg(root, voc, props, root / "sfull", **kw))["last"]
    out = capsys.readouterr().out
    assert ("2 images x 8 regions per process, shared (scales [64, 80], max 96, stage inception4e, pooled 2), "
            "every scale per epoch") in out
    assert {"train_loss_cls", "train_loss_bbox", "train_acc", "val_voc_mAP"} <= set(full)
    assert full["train_loss"] == pytest.approx(full["train_loss_cls"] + full["train_loss_bbox"], rel=1e-6)
    last = load_checkpoint(root / "sfull" / "last.pth")
    assert last["detector"]["mode"] == "shared"
    assert last["detector"]["shared"] == {"scales": [64, 80], "max_size": 96, "stage": "inception4e",
                                          "pooled_size": 2, "pool_context": False}
    train(_cfg(root, voc, props, root / "shalf", epochs=1, eval_every=0, **kw))
    train(_cfg(root, voc, props, root / "shalf", resume=str(root / "shalf" / "last.pth"), eval_every=0, **kw))
    b = load_checkpoint(root / "shalf" / "last.pth")
    assert b["epoch"] == 2
    for k, v in last["model"].items():
        assert torch.equal(v, b["model"][k]), k
    with pytest.raises(Exception, match="aux_logits: false"):
        train(_cfg(root, voc, props, root / "bad", mode="shared"))
    with pytest.raises(ConfigError, match="^context_pad: .*< input_size / 2"):
        train(_cfg(root, voc, props, root / "bad", **{**kw, "pool_context": True, "context_pad": 30}))
    with pytest.raises(ConfigError, match="^scales: 120 is above max_size 96, so no image is rescaled to it"):
        train(_cfg(root, voc, props, root / "bad", **{**kw, "scales": [64, 120]}))
    assert not (root / "bad").exists() or not any((root / "bad").iterdir())  # refused before anything is written


def test_gdet_train_det_shared_mode_learns(tiny, tmp_path):
    """`gdet train det` with a config file in shared mode: the training loss falls over three epochs on a fixed
    image set, and last.pth / best.pth are shared-mode detectors that `gdet detect` reports as such."""
    from click.testing import CliRunner

    from gdet.cli import main

    root, voc, props = tiny
    cfg = tmp_path / "det_shared.yaml"
    cfg.write_text(f"data: {voc}\nproposals: {props}\nmode: shared\naux_logits: false\nscales: [72]\nmax_size: 96\n"
                   "input_size: 32\nbatch_size: 32\nimages_per_batch: 2\niters_per_epoch: 4\nepochs: 3\n"
                   "lr: 0.01\nlr_schedule: constant\nwarmup_epochs: 0\nhflip: 0\neval_every: 0\ndevice: cpu\n"
                   f"export_fp16: false\nwork_dir: {tmp_path / 'run'}\n")
    r = CliRunner().invoke(main, ["train", "det", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    for name in ("last.pth", "best.pth"):
        ck = load_checkpoint(tmp_path / "run" / name)
        assert ck["detector"]["mode"] == "shared" and ck["detector"]["shared"]["scales"] == [72]
    r = CliRunner().invoke(main, ["detect", "--image", f"{voc}/JPEGImages/im004.png", "--weights",
                                  str(tmp_path / "run" / "best.pth"), "--proposals", str(props), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "mode: shared (scales [72], max 96, stage inception4e, pooled 2)" in r.output


def test_a_detector_starts_a_detector_of_either_mode(tmp_path, capsys):
    """``weights=`` may be a detector: its backbone always loads; with the same classes its classifier and box head
    are kept (an R-CNN detector fine-tuned into shared mode), with other classes they are re-initialised. A
    classifier run can start from a detector's backbone too."""
    from gdet.backbones import build_backbone
    from gdet.detection.model import build_detector
    from gdet.detection.train import DetectionTask
    from gdet.engine import load_start_weights
    from gdet.engine.checkpoint import FORMAT
    from gdet.errors import CheckpointError

    names = ["cat", "dog"]
    torch.manual_seed(0)
    src = build_detector("googlenet_tv", names, input_size=32, bbox_reg=True)  # rcnn, with aux heads
    path = tmp_path / "det.pth"
    torch.save({"format": FORMAT, "task": "detect", "backbone": "googlenet_tv", "class_names": names,
                "model": src.state_dict()}, path)
    want = src.state_dict()

    shared = build_detector("googlenet_tv", names, input_size=32, bbox_reg=True, mode="shared",
                            backbone_kwargs={"aux_logits": False}, shared={"scales": [64]})
    DetectionTask._load_start_weights(shared, str(path), names, strict=True)
    got = shared.state_dict()
    assert set(got) < set(want)  # no aux heads in shared mode
    for k, v in got.items():
        assert torch.equal(v, want[k]), k
    assert "box head loaded" in capsys.readouterr().out

    other = build_detector("googlenet_tv", ["cat", "bird"], input_size=32, bbox_reg=True,
                           backbone_kwargs={"aux_logits": False})
    DetectionTask._load_start_weights(other, str(path), ["cat", "bird"], strict=True)
    got = other.state_dict()
    assert torch.equal(got["backbone.conv1.conv.weight"], want["backbone.conv1.conv.weight"])
    assert not torch.equal(got["backbone.fc.weight"], want["backbone.fc.weight"])  # re-initialised
    assert not torch.equal(got["bbox_head.weight"], want["bbox_head.weight"])
    assert "re-initialised" in capsys.readouterr().out

    cls = build_backbone("googlenet_tv", num_classes=5, aux_logits=False)
    loaded, total = load_start_weights(cls, path)
    assert loaded == total - 2 and torch.equal(cls.conv1.conv.weight, want["backbone.conv1.conv.weight"])

    bad = build_detector("googlenet_tv", names, input_size=32, bbox_reg=True, backbone_kwargs={"aux_logits": False})
    state = dict(want)
    state["bbox_head.weight"] = torch.zeros(4, 7)
    torch.save({"format": FORMAT, "task": "detect", "backbone": "googlenet_tv", "class_names": names,
                "model": state}, path)
    with pytest.raises(CheckpointError, match="box head"):
        DetectionTask._load_start_weights(bad, str(path), names, strict=True)


def test_train_with_a_teacher_in_either_mode(tiny, capsys):
    """``distill``: a detector file (or a list: an ensemble) teaches every region of either mode. The logged parts
    add up to the loss; a shared run taught by an R-CNN detector resumes bit for bit; the R-CNN mode's teacher is
    asked for each crop as it was warped (flipped or not); a wrong teacher is a one-line error before anything
    is written."""
    from types import SimpleNamespace

    from gdet.detection.model import load_detector
    from gdet.detection.sampler import RegionSampler
    from gdet.detection.train import DetectionTask, RegionBatches, check, crop_batch, prepare_regions
    from gdet.proposals import load_proposals

    root, voc, props = tiny
    train(_cfg(root, voc, props, root / "teacher", epochs=1, eval_every=0, bbox_reg=False))
    teacher = str(root / "teacher" / "last.pth")
    kw = dict(mode="shared", aux_logits=False, scales=[64, 80], max_size=96, hflip=0.5, eval_every=0,
              distill=teacher, distill_weight=0.5, distill_temperature=2.0)
    full = train(_cfg(root, voc, props, root / "kdfull", **kw))["last"]
    assert "distill: taught by rcnn" in capsys.readouterr().out
    assert full["train_loss"] == pytest.approx(full["train_loss_cls"] + full["train_loss_distill"]
                                               + full["train_loss_bbox"], rel=1e-6)
    assert full["train_loss_distill"] > 0
    train(_cfg(root, voc, props, root / "kdhalf", **{**kw, "epochs": 1}))
    train(_cfg(root, voc, props, root / "kdhalf", resume=str(root / "kdhalf" / "last.pth"), **kw))
    a, b = load_checkpoint(root / "kdfull" / "last.pth"), load_checkpoint(root / "kdhalf" / "last.pth")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # A teacher added at a resume changes what the training loss measures: best.pth restarts there.
    train(_cfg(root, voc, props, root / "kdlate", **{**kw, "epochs": 1, "distill": None}))
    capsys.readouterr()
    train(_cfg(root, voc, props, root / "kdlate", resume=str(root / "kdlate" / "last.pth"), **kw))
    assert (f"distill None → {teacher} changes what the training loss measures; best.pth restarts at epoch 2"
            in capsys.readouterr().out)
    assert load_checkpoint(root / "kdlate" / "best.pth")["epoch"] == 2

    # R-CNN mode taught by an ensemble of the shared detector and the R-CNN one.
    ens = [str(root / "kdfull" / "last.pth"), teacher]
    res = train(_cfg(root, voc, props, root / "kdrcnn", epochs=1, eval_every=0, distill=ens, hflip=0.5))["last"]
    assert "distill: taught by 1: shared" in capsys.readouterr().out
    assert res["train_loss"] == pytest.approx(res["train_loss_cls"] + res["train_loss_distill"]
                                              + res["train_loss_bbox"], rel=1e-6)

    # The teacher scores each R-CNN crop as warped: a flipped crop is the flipped image's mirrored box.
    task = DetectionTask(check(_cfg(root, voc, props, root / "unused", distill=teacher, bbox_reg=False)))
    task.teacher = t = load_detector(teacher)
    task.class_names = t.class_names
    run = SimpleNamespace(device=torch.device("cpu"), precision="fp32", channels_last=False)
    task.train_set = load_detection_set(voc, "train")

    regions, bbox = prepare_regions(task.train_set.records, load_proposals(props), max_proposals=50)
    batches = RegionSampler(regions, 24, 0.25, seed=0).epoch(0, 1)
    batch = RegionBatches(task.train_set.records, regions, bbox, batches)[0]
    torch.manual_seed(3)
    crops, flipped = crop_batch(t, batch, run.device, hflip=0.5)
    assert 0 < int(flipped.sum()) < flipped.numel()
    with torch.no_grad():
        want = torch.softmax(t(crops).logits, 1)
    assert torch.allclose(task._teach_crops(batch, flipped, run), want, atol=1e-4)

    bad = dict(kw, distill=str(root / "nope.pth"))
    with pytest.raises(Exception, match="nope.pth"):
        train(_cfg(root, voc, props, root / "kdbad", **bad))
    with pytest.raises(Exception, match="nope.pth"):  # before any proposals are computed (and cached there)
        train(_cfg(root, voc, props, root / "kdbad", **dict(bad, proposals="random")))
    other = save_detector(tiny_detector(num_classes=5), root / "five_classes.pth")
    with pytest.raises(ConfigError, match=r"^distill: .*five_classes.pth: its classes \(.*\) differ from those of"):
        train(_cfg(root, voc, props, root / "kdbad", **dict(kw, distill=str(other))))
    with pytest.raises(ConfigError, match="^distill: must be a detector file"):
        train(_cfg(root, voc, props, root / "kdbad", **dict(kw, distill=[])))
    with pytest.raises(ConfigError, match=r"^distill_weight: must be in \[0, 1\], got 1.5"):
        train(_cfg(root, voc, props, root / "kdbad", **dict(kw, distill_weight=1.5)))
    assert not (root / "kdbad").exists() or not any((root / "kdbad").iterdir())


def test_detector_records_how_its_training_proposals_were_made(tiny, tmp_path):
    # A selective-search file's settings travel with the detector (through training, export and loading), so that
    # gdet detect and gdet test default to them; a file that does not say records nothing.
    from gdet.detection.model import export_detector, load_detector
    from gdet.proposals import load_proposals, save_proposals

    root, voc, props = tiny
    ss = load_proposals(props)
    ss.meta = {"method": "ss", "backend": "opencv", "mode": "fast", "max_side": 64, "sigma": 0.8, "data": str(voc),
               "split": "train"}
    save_proposals(tmp_path / "ss.npz", ss)
    train(_cfg(root, voc, tmp_path / "ss.npz", tmp_path / "run", epochs=1, eval_every=0, aux_logits=False,
               bbox_reg=False))
    want = {"method": "ss", "max_side": 64, "sigma": 0.8}
    assert load_checkpoint(tmp_path / "run" / "last.pth")["detector"]["proposals"] == want
    export_detector(tmp_path / "run" / "last.pth", tmp_path / "fp16.pth")
    for path in (tmp_path / "run" / "last.pth", tmp_path / "fp16.pth"):
        assert load_detector(path).proposals == want
    train(_cfg(root, voc, props, tmp_path / "plain", epochs=1, eval_every=0, aux_logits=False, bbox_reg=False))
    assert "proposals" not in load_checkpoint(tmp_path / "plain" / "last.pth")["detector"]
    assert load_detector(tmp_path / "plain" / "last.pth").proposals is None
    bad = load_checkpoint(tmp_path / "fp16.pth")
    bad["detector"]["proposals"] = ["ss"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth: malformed training proposal settings"):
        load_detector(tmp_path / "bad.pth")
