"""The synthetic benchmark (determinism, annotations, classify crops) and the `gdet data` CLI."""
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gdet.cli import main as gdet_main
from gdet.data import load_detection_set, read_coco, read_image, read_image_folder, read_voc
from gdet.data.synth import CLASS_NAMES, DIFFICULT_SIZE, DIFFICULT_VISIBLE, SynthConfig, generate, generate_image

SMALL = dict(images=6, width=128, height=96)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_classes_differ_by_shape_and_texture():
    assert len(CLASS_NAMES) >= 8 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)


def test_generate_image_objects_are_consistent():
    cfg = SynthConfig(images=20, seed=3, width=160, height=120)
    n_obj, n_diff = 0, 0
    for i in range(20):
        img, objs = generate_image(cfg, i)
        assert img.shape == (120, 160, 3) and img.dtype == np.uint8
        assert len(objs) <= cfg.max_objects
        for o in objs:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
            assert 0 <= o["label"] < len(CLASS_NAMES) and 0 < o["visible"] <= 1
            tiny = max(x2 - x1, y2 - y1) < DIFFICULT_SIZE
            assert o["difficult"] == (o["visible"] < DIFFICULT_VISIBLE or tiny)
        n_obj += len(objs)
        n_diff += sum(o["difficult"] for o in objs)
        # same (seed, index) -> same image, independent of what was generated before
        again, objs2 = generate_image(cfg, i)
        assert np.array_equal(img, again) and objs == objs2
    assert n_obj > 40 and 0 < n_diff < n_obj


def test_generator_is_deterministic_and_worker_independent(tmp_path):
    cfg = SynthConfig(seed=7, **SMALL)
    generate(cfg, tmp_path / "a", formats=("voc", "coco"), workers=0, show_progress=False)
    generate(cfg, tmp_path / "b", formats=("voc", "coco"), workers=2, show_progress=False)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys() and len([k for k in a if k.endswith(".jpg")]) == 6
    assert all(a[k] == b[k] for k in a)
    generate(SynthConfig(seed=8, **SMALL), tmp_path / "c", formats=("voc",), workers=0, show_progress=False)
    c = _tree(tmp_path / "c")
    assert c["JPEGImages/000001.jpg"] != a["JPEGImages/000001.jpg"]


def test_generated_voc_and_coco_agree(tmp_path):
    cfg = SynthConfig(seed=1, val_fraction=0.5, **SMALL)
    summary = generate(cfg, tmp_path, formats=("voc", "coco"), workers=0, show_progress=False)
    assert summary["splits"]["val"]["images"] == 3 and summary["splits"]["train"]["images"] == 3
    for split in ("train", "val"):
        v, c = read_voc(tmp_path, split), read_coco(tmp_path / f"{split}.json")
        assert v.class_names == c.class_names == CLASS_NAMES
        assert v.stats["objects"] == summary["splits"][split]["objects"]
        assert v.stats["ignored"] == summary["splits"][split]["difficult"]
        for r, s in zip(v.records, c.records):
            assert Path(r.path).resolve() == Path(s.path).resolve() and r.image_id == Path(r.path).stem
            assert torch.equal(r.boxes, s.boxes) and torch.equal(r.labels, s.labels)
            assert torch.equal(r.ignore, s.ignore) and r.extra["truncated"] == s.extra["truncated"]
            assert read_image(r.path).shape == (96, 128, 3)
    assert load_detection_set(tmp_path, split="val").format == "voc"


def test_classify_task_writes_image_folder(tmp_path):
    cfg = SynthConfig(seed=2, task="classify", crop_size=32, val_fraction=0.5, **SMALL)
    summary = generate(cfg, tmp_path, workers=0, show_progress=False)
    paths, labels, names = read_image_folder(tmp_path / "train")
    assert names == CLASS_NAMES  # every class folder exists, in the detection order of train/classes.txt
    n_easy = sum(s["objects"] - s["difficult"] for s in summary["splits"].values())
    val_paths, _, _ = read_image_folder(tmp_path / "val", names)
    assert len(paths) + len(val_paths) == n_easy
    assert read_image(paths[0]).shape == (32, 32, 3)


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_synth_convert_browse(tmp_path):
    run = CliRunner().invoke
    r = run(gdet_main, ["data", "synth", "--out", str(tmp_path / "s"), "--images", "4", "--seed", "0",
                        "--format", "voc", "--size", "96x64", "--workers", "1", "--val-fraction", "0.5"])
    assert r.exit_code == 0, r.output
    assert "val: 2 images" in r.output and "images/min" in r.output

    r = run(gdet_main, ["data", "convert", "--from", "voc", "--to", "coco", "--data", str(tmp_path / "s"),
                        "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c" / "train.json").is_file() and len(list((tmp_path / "c" / "images").glob("*.jpg"))) == 4
    r = run(gdet_main, ["data", "convert", "--from", "coco", "--to", "voc", "--data", str(tmp_path / "c"),
                        "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    for split in ("train", "val"):
        a, b = read_voc(tmp_path / "s", split), read_voc(tmp_path / "v", split)
        assert [x.image_id for x in a] == [x.image_id for x in b]
        for x, y in zip(a, b):
            assert torch.equal(x.boxes, y.boxes) and torch.equal(x.labels, y.labels)
            assert torch.equal(x.ignore, y.ignore) and x.extra["truncated"] == y.extra["truncated"]

    r = run(gdet_main, ["data", "browse", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "png"),
                        "--split", "val"])
    assert r.exit_code == 0, r.output
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2 and read_image(pngs[0]).shape == (64, 96, 3)
    r = run(gdet_main, ["data", "browse", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "one"),
                        "--split", "val", "--limit", "1"])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "one").glob("*.png")] == [pngs[0].name]


@pytest.mark.parametrize("args, message", [
    (["browse", "--data", "{tmp}/nothing", "--out", "{tmp}/o"], "nothing: dataset not found"),
    (["synth", "--out", "{tmp}/s", "--size", "big"], "--size must look like 500x375"),
    (["synth", "--out", "{tmp}/s", "--size", "100000x100000"],
     "error: --size: each side must be at most 8192, got 100000x100000"),
    (["synth", "--out", "{tmp}/s", "--task", "classify", "--crop-size", "0"],
     "error: --crop-size: 0 is not in the range 1<=x<=8192"),
    (["synth", "--out", "{tmp}/s", "--task", "classify", "--crop-size", "-4"],
     "error: --crop-size: -4 is not in the range 1<=x<=8192"),
    (["synth", "--out", "{tmp}/s", "--seed", "-1"], "error: --seed: -1 is not in the range x>=0"),
    (["convert", "--from", "voc", "--to", "coco", "--data", "{tmp}", "--out", "{tmp}/o"], "not a VOC dataset"),
])
def test_cli_bad_input_is_one_line_error(tmp_path, args, message):
    r = CliRunner().invoke(gdet_main, ["data"] + [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_generate_refuses_bad_config(tmp_path):
    """The library checks what the CLI's option types check, before any image is drawn."""
    from gdet.errors import DataError

    for cfg, message in ((SynthConfig(images=1, width=100000, height=100000),
                          "--size: each side must be at most 8192, got 100000x100000"),
                         (SynthConfig(images=1, seed=-1), "--seed: must be a non-negative integer, got -1"),
                         (SynthConfig(images=1, task="classify", crop_size=0),
                          r"--crop-size: must be an integer in \[1, 8192\], got 0")):
        with pytest.raises(DataError, match="^" + message + "$"):
            generate(cfg, tmp_path / "x", workers=0, show_progress=False)
    assert not (tmp_path / "x").exists()
    generate(SynthConfig(images=4, width=96, height=64, task="classify", crop_size=8, seed=2**40), tmp_path / "c",
             workers=0, show_progress=False)
    crops = list((tmp_path / "c").rglob("*.jpg"))
    assert crops and read_image(crops[0]).shape == (8, 8, 3)


def test_cli_reports_clipped_boxes(tmp_path):
    generate(SynthConfig(seed=0, images=2, width=64, height=48, val_fraction=0.5), tmp_path, workers=0,
             show_progress=False)
    assert not (tmp_path / "val.json").exists()  # VOC only by default
    split = (tmp_path / "ImageSets" / "Main" / "val.txt").read_text().split()[0]
    xml = tmp_path / "Annotations" / f"{split}.xml"
    assert "<xmax>" in xml.read_text()
    xml.write_text(xml.read_text().replace("<xmax>", "<xmax>1000", 1))  # now far outside the image
    r = CliRunner().invoke(gdet_main, ["data", "browse", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "clipped 1 boxes partly outside their image" in r.output


def test_cli_convert_synth_coco_folder(tmp_path):
    generate(SynthConfig(seed=4, images=3, width=64, height=48, val_fraction=0.0), tmp_path / "s", formats=("coco",),
             workers=0, show_progress=False)
    assert load_detection_set(tmp_path / "s", split=None).split == "train"  # the only split .json
    r = CliRunner().invoke(gdet_main, ["data", "convert", "--from", "coco", "--to", "voc", "--data",
                                       str(tmp_path / "s"), "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output  # synth.json is not mistaken for a split
    a, b = read_coco(tmp_path / "s" / "train.json"), read_voc(tmp_path / "v", "train")
    assert b.class_names == CLASS_NAMES and sum(len(x) for x in a) == sum(len(x) for x in b)
