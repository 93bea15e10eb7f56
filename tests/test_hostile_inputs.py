"""Hostile and malformed inputs, one class of input per test: each gives one `error:` line and exit code 1 (or,
where it is harmless, works), never a traceback, and leaves files already written untouched.

The corpus is generated here: tiny VOC / COCO / result / proposal / image files."""
import json
import os
import stat
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from gdet.cli import main as gdet
from gdet.data import load_detection_set, read_coco, read_image, read_voc, write_voc
from gdet.data.dataset import DataWarning
from gdet.errors import DataError, install_warning_format
from gdet.io import atomic_path, atomic_write, remove_stale_temps, save_json
from gdet.proposals.files import load_proposals

ROOT = Path(__file__).resolve().parents[1]
PASSWD = "../../../../../../etc/passwd"


# ---------------------------------------------------------------------------------------------------------------
# helpers

def run(args, env=None):
    """``gdet ARGS`` in this process; returns the click Result (stdout and stderr apart)."""
    return CliRunner().invoke(gdet, [str(a) for a in args], env=env)


def assert_refused(result, *needles):
    """Exit code 1, exactly one line on stderr, starting ``error:`` and naming each of ``needles``."""
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.exit_code == 1, (result.exit_code, out, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert sum(line.startswith("error:") for line in out.splitlines()) == 1
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def png(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def bomb_png(path: Path, w: int = 15000, h: int = 15000) -> Path:
    """A small PNG whose header claims ``w x h`` pixels (what a decompression bomb looks like before decoding)."""
    raw = bytearray()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path, format="PNG")
    data = path.read_bytes()
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", w, h)
    raw += data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr))) + data[33:]
    path.write_bytes(bytes(raw))
    return path


VOC_XML = """<annotation><filename>{filename}</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
<object><name>cat</name><difficult>{difficult}</difficult><truncated>0</truncated>
<bndbox><xmin>{xmin}</xmin><ymin>2</ymin><xmax>20</xmax><ymax>18</ymax></bndbox></object></annotation>
"""


def make_voc(root: Path, stem="a", image_ext=".jpg", **fields) -> Path:
    """A one-image VOC root; ``fields`` override the XML's filename/w/h/difficult/xmin."""
    values = {"filename": f"{stem}.jpg", "w": 32, "h": 24, "difficult": 0, "xmin": 3}
    values.update(fields)
    png(root / "JPEGImages" / f"{stem}{image_ext}", 32, 24)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / f"{stem}.xml").write_text(VOC_XML.format(**values))
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text(f"{stem}\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def coco_dict():
    return {"images": [{"id": 1, "file_name": "img/a.png", "width": 32, "height": 24},
                       {"id": 2, "file_name": "img/b.png", "width": 32, "height": 24}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8], "area": 80,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [20, 10, 10, 10], "area": 100,
                             "iscrowd": 0}],
            "categories": [{"id": 5, "name": "cat"}, {"id": 7, "name": "dog"}]}


def make_coco(folder: Path, data=None) -> Path:
    png(folder / "img" / "a.png", 32, 24)
    png(folder / "img" / "b.png", 32, 24, seed=1)
    path = folder / "ann.json"
    path.write_text(json.dumps(coco_dict() if data is None else data))
    return path


def set_path(d, path: str, value):
    """``set_path(d, "images.0.width", v)``; the value ``DELETE`` removes the key."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        d = d[k]
    if value == "DELETE":
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


@pytest.fixture
def existing(tmp_path):
    """An output file that a refused command must leave as it is."""
    p = tmp_path / "out" / "keep.json"
    p.parent.mkdir()
    p.write_text('{"old": true}\n')
    return p


# ---------------------------------------------------------------------------------------------------------------
# 1. paths that leave the dataset root

def test_voc_filename_outside_root_is_refused_and_not_copied(tmp_path):
    voc = make_voc(tmp_path / "voc", filename=PASSWD)
    with pytest.raises(DataError, match=r"a\.xml: <filename>: file name '.*etc/passwd' points outside"):
        read_voc(voc, "val")
    out = tmp_path / "converted"
    r = run(["data", "convert", "--from", "voc", "--to", "coco", "--data", voc, "--out", out])
    assert_refused(r, "a.xml", "etc/passwd", "outside")
    assert not out.exists()  # nothing copied, nothing written


def test_voc_image_id_with_a_path_is_refused(tmp_path):
    voc = make_voc(tmp_path / "voc")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("../../outside\n")
    r = run(["data", "browse", "--data", voc, "--out", tmp_path / "pics"])
    assert_refused(r, "val.txt: line 1", "../../outside")


@pytest.mark.parametrize("name", ["/etc/passwd", "../x.png", "img/../../x.png", ""])
def test_coco_file_name_outside_root_is_refused(tmp_path, name):
    data = coco_dict()
    data["images"][1]["file_name"] = name
    ann = make_coco(tmp_path / "coco", data)
    (tmp_path / "x.png").write_bytes((tmp_path / "coco" / "img" / "a.png").read_bytes())
    out = tmp_path / "converted"
    r = run(["data", "convert", "--from", "coco", "--to", "voc", "--data", ann, "--out", out])
    assert_refused(r, "ann.json", "images[1].file_name", repr(name))
    assert not out.exists()


def test_coco_image_root_reads_images_kept_elsewhere(tmp_path):
    pictures = tmp_path / "pictures"
    data = coco_dict()
    for im in data["images"]:
        im["file_name"] = str(pictures / Path(im["file_name"]).name)  # absolute, outside the JSON's folder
        png(Path(im["file_name"]), 32, 24)
    (tmp_path / "coco").mkdir()
    ann = tmp_path / "coco" / "ann.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[0\]\.file_name: .* points outside the image folder"):
        read_coco(ann)
    dset = read_coco(ann, image_root=pictures)
    assert [Path(r.path) for r in dset.records] == [pictures / "a.png", pictures / "b.png"]
    assert load_detection_set(ann, image_root=pictures).records[1].path == str(pictures / "b.png")
    r = run(["data", "convert", "--from", "coco", "--to", "voc", "--data", ann, "--out", tmp_path / "voc",
             "--image-root", pictures])
    assert r.exit_code == 0, r.output + r.stderr
    assert (tmp_path / "voc" / "JPEGImages" / "b.png").read_bytes() == (pictures / "b.png").read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# 4. VOC numbers, ids with spaces, images that are not .jpg

@pytest.mark.parametrize("field,value,message", [
    ("w", "nan", "<size>: <width> is not a finite number: 'nan'"),
    ("h", "-3", "<size>: <height> must be a whole number of pixels"),
    ("difficult", "1e400", "object 1: <difficult> is not a finite number: '1e400'"),
    ("difficult", "2", "object 1: <difficult> must be 0 or 1"),
    ("xmin", "abc", "object 1: <xmin> is not a finite number: 'abc'"),
    ("xmin", "inf", "object 1: <xmin> is not a finite number: 'inf'"),
    ("xmin", "-nan", "object 1: <xmin> is not a finite number: '-nan'"),
])
def test_voc_bad_numbers_name_file_and_field(tmp_path, field, value, message):
    voc = make_voc(tmp_path / "voc", **{field: value})
    with pytest.raises(DataError) as e:
        read_voc(voc, "val")
    assert str(e.value) == f"{voc / 'Annotations' / 'a.xml'}: {message}" or message in str(e.value)
    assert "a.xml" in str(e.value) and "\n" not in str(e.value)


def test_voc_entity_expansion_bomb_is_refused(tmp_path):
    voc = make_voc(tmp_path / "voc")
    entities = "".join(f'<!ENTITY e{i} "{("&e%d;" % (i - 1)) * 10}">' for i in range(1, 10))
    (voc / "Annotations" / "a.xml").write_text(
        f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e0 "lollollol">{entities}]>'
        "<annotation><filename>&e9;</filename></annotation>")
    with pytest.raises(DataError, match=r"a\.xml: line 1, column \d+: malformed XML: limit on input amplification"):
        read_voc(voc, "val")


def test_voc_bad_number_in_gdet_eval(tmp_path, existing):
    voc = make_voc(tmp_path / "voc", difficult="1e400")
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    r = run(["eval", "--data", voc, "--dets", dets, "--json", existing])
    assert_refused(r, "a.xml", "<difficult>", "1e400")
    assert existing.read_text() == '{"old": true}\n'


def test_voc_ids_with_spaces_round_trip(tmp_path):
    voc = make_voc(tmp_path / "voc", stem="my photo 000004")
    dset = read_voc(voc, "val")
    assert [r.image_id for r in dset.records] == ["my photo 000004"] and len(dset.records[0]) == 1
    write_voc(dset, tmp_path / "copy", "val")
    back = read_voc(tmp_path / "copy", "val")
    assert [r.image_id for r in back.records] == ["my photo 000004"]
    assert back.records[0].boxes.tolist() == dset.records[0].boxes.tolist()
    # a per-class file of the VOC devkit: "<id> <flag>" lines
    (voc / "ImageSets" / "Main" / "cat_val.txt").write_text("my photo 000004  1\n")
    assert [r.image_id for r in read_voc(voc, "cat_val").records] == ["my photo 000004"]


@pytest.mark.parametrize("ext", [".png", ".jpeg", ".tif"])
def test_voc_images_with_other_extensions(tmp_path, ext):
    voc = make_voc(tmp_path / "voc", image_ext=ext)  # the XML still says a.jpg
    dset = read_voc(voc, "val")
    assert dset.records[0].path == str(voc / "JPEGImages" / f"a{ext}")
    assert read_image(dset.records[0].path).shape == (24, 32, 3)


# ---------------------------------------------------------------------------------------------------------------
# 5. COCO fields of the wrong type

@pytest.mark.parametrize("where,value,message", [
    ("images.1.width", "wide", "images[1].width: expected a finite number, got 'wide'"),
    ("annotations.0.area", "big", "annotations[0].area: expected a finite number, got 'big'"),
    ("categories.0.id", "abc", "categories[0].id: expected an integer, got 'abc'"),
    ("images.0.id", [1, 2], "images[0].id: expected an integer or a string, got [1, 2]"),
    ("images", None, "images: expected a list, got None"),
    ("annotations", {"a": 1}, "annotations: expected a list, got {'a': 1}"),
    ("annotations.1.bbox", [1, 2, "3", 4], "annotations[1].bbox[2]: expected a finite number, got '3'"),
    ("annotations.1.bbox", [1, 2, float("nan"), 4], "annotations[1].bbox[2]: expected a finite number, got nan"),
    ("annotations.1.bbox", [1, 2, 3], "annotations[1].bbox: expected 4 numbers [x, y, w, h], got [1, 2, 3]"),
    ("annotations.0.iscrowd", "yes", "annotations[0].iscrowd: expected 0 or 1, got 'yes'"),
    ("annotations.0.category_id", True, "annotations[0].category_id: expected an integer, got True"),
    ("images.1.file_name", 7, "images[1].file_name: expected a string, got 7"),
    ("categories.1.name", None, "categories[1].name: expected a string, got None"),
    ("annotations.0.image_id", 99, "annotations[0]: unknown image_id 99"),
    ("images.0", "DELETE", "annotations[0]: unknown image_id 1"),
])
def test_coco_wrong_types_name_file_and_field(tmp_path, where, value, message):
    data = coco_dict()
    set_path(data, where, value)
    ann = make_coco(tmp_path / "coco", data)
    with pytest.raises(DataError) as e:
        read_coco(ann)
    assert str(e.value) == f"{ann}: {message}"


def test_coco_wrong_type_in_commands(tmp_path, existing):
    data = coco_dict()
    data["images"][1]["width"] = "wide"
    ann = make_coco(tmp_path / "coco", data)
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    assert_refused(run(["eval", "--data", ann, "--dets", dets, "--metrics", "coco", "--json", existing]),
                   "ann.json: images[1].width: expected a finite number, got 'wide'")
    assert existing.read_text() == '{"old": true}\n'
    assert_refused(run(["data", "browse", "--data", tmp_path / "coco", "--split", "ann",
                        "--out", tmp_path / "pics"]),
                   "images[1].width")
    assert not (tmp_path / "pics").exists()


# ---------------------------------------------------------------------------------------------------------------
# 5b. detection result files

@pytest.mark.parametrize("entry,message", [
    ({"score": True}, "entry 2: score must be a number, got True"),
    ({"score": "0.9"}, "entry 2: score must be a number, got '0.9'"),
    ({"bbox": [1, 2, -3, 4]}, "entry 2: bbox width and height must be >= 0"),
    ({"bbox": [1, 2, 3, float("inf")]}, "entry 2: bbox or score is not finite"),
    ({"bbox": [1, 2, 3, float("nan")]}, "entry 2: bbox or score is not finite"),
    ({"bbox": [1, False, 3, 4]}, "entry 2: bbox must be 4 numbers [x, y, w, h], got [1, False, 3, 4]"),
    ({"bbox": "1 2 3 4"}, "entry 2: bbox must be 4 numbers"),
    ({"image_id": [1]}, "entry 2: image_id must be an integer or a string, got [1]"),
    ({"category_id": 3}, "entry 2: unknown category_id 3"),
    ({"image_id": 42}, "entry 2: unknown image_id 42"),
])
def test_result_file_refused_by_gdet_eval(tmp_path, existing, entry, message):
    ann = make_coco(tmp_path / "coco")
    good = {"image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 8], "score": 0.9}
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([good, {**good, **entry}]))
    assert_refused(run(["eval", "--data", ann, "--dets", dets, "--metrics", "coco", "--json", existing]),
                   f"{dets}: {message}")
    assert existing.read_text() == '{"old": true}\n'


# ---------------------------------------------------------------------------------------------------------------
# 6. proposal files

def proposal_arrays(**change):
    d = {"format": np.array("gdet-proposals"), "version": np.array(1, dtype=np.int64),
         "image_ids": np.array(["a", "b"]), "id_type": np.array("str"),
         "offsets": np.array([0, 2, 3], dtype=np.int64),
         "boxes": np.array([[0, 0, 5, 5], [1, 1, 4, 4], [2, 2, 9, 9]], dtype=np.float32),
         "scores": np.array([0.9, 0.5, 0.7], dtype=np.float32), "sizes": np.array([[10, 10], [10, 10]]),
         "meta": np.array('{"method": "ss"}')}
    for k, v in change.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    return d


@pytest.mark.parametrize("change,message", [
    ({"meta": np.array("[1, 2")}, "meta must be a JSON object"),
    ({"meta": np.array("[1, 2]")}, "meta must be a JSON object"),
    ({"version": None}, "has no integer 'version'"),
    ({"version": np.array("one")}, "has no integer 'version'"),
    ({"image_ids": np.array(["a", "a"])}, "image id 'a' appears more than once"),
    ({"scores": np.array([0.5], dtype=np.float32)}, "scores must be a float array [M] with one score per box"),
    ({"boxes": np.array([[0, 0, np.nan, 5], [1, 1, 4, 4], [2, 2, 9, 9]], dtype=np.float32)}, "NaN or infinite"),
    ({"boxes": np.zeros((3, 5), dtype=np.float32)}, "boxes must be a float array [M, 4]"),
    ({"offsets": np.array([0, 5, 3])}, "inconsistent offsets"),
    ({"id_type": np.array("int")}, "id_type is 'int' but an image id is not an integer"),
    ({"format": np.array("other")}, "not a gdet proposal file"),
])
def test_proposal_file_refused(tmp_path, change, message):
    path = tmp_path / "props.npz"
    np.savez(path, **proposal_arrays(**change))
    assert_refused(run(["proposals", "info", path]), str(path), message)


def test_good_proposal_file_reads(tmp_path):
    path = tmp_path / "props.npz"
    np.savez(path, **proposal_arrays())
    props = load_proposals(path)
    assert props["b"][0].tolist() == [[2, 2, 9, 9]] and props.meta == {"method": "ss"}


# ---------------------------------------------------------------------------------------------------------------
# 3. images: decompression bombs, 1-pixel and 5000x1 images

@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_detection import save_detector, tiny_detector

    return save_detector(tiny_detector(input_size=32), tmp_path_factory.mktemp("det") / "det.pth")


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(DataError) as e:
        read_image(bomb)
    text = str(e.value)
    assert text.startswith(f"{bomb}: image is 15000x15000 = 225,000,000 pixels, over the limit of 178,956,970")
    assert "GDET_MAX_IMAGE_PIXELS" in text and "\n" not in text
    monkeypatch.setenv("GDET_MAX_IMAGE_PIXELS", "300000000")  # raised: the limit passes, the (fake) data fails
    with pytest.raises(DataError, match="cannot decode image"):
        read_image(bomb)
    small = png(tmp_path / "small.png", 20, 20)
    monkeypatch.setenv("GDET_MAX_IMAGE_PIXELS", "399")
    with pytest.raises(DataError, match=r"20x20 = 400 pixels, over the limit of 399"):
        read_image(small)
    monkeypatch.setenv("GDET_MAX_IMAGE_PIXELS", "400")
    assert read_image(small).shape == (20, 20, 3)
    monkeypatch.setenv("GDET_MAX_IMAGE_PIXELS", "many")
    with pytest.raises(DataError, match="GDET_MAX_IMAGE_PIXELS='many': expected a positive whole number"):
        read_image(small)


def test_decompression_bomb_in_commands(tmp_path, detector, existing):
    bomb = bomb_png(tmp_path / "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        assert_refused(run(["detect", "--image", bomb, "--weights", detector, "--json", existing]),
                       str(bomb), "178,956,970", "GDET_MAX_IMAGE_PIXELS")
    assert existing.read_text() == '{"old": true}\n'
    voc = make_voc(tmp_path / "voc")
    bomb_png(voc / "JPEGImages" / "a.jpg")  # a PNG under a .jpg name: Pillow reads the content
    assert_refused(run(["data", "browse", "--data", voc, "--out", tmp_path / "pics"]), "a.jpg",
                   "GDET_MAX_IMAGE_PIXELS")
    out = tmp_path / "props.npz"
    assert_refused(run(["proposals", "compute", "--data", voc, "--out", out, "--workers", "0"]),
                   "a.jpg", "GDET_MAX_IMAGE_PIXELS")
    assert not out.exists()


@pytest.mark.parametrize("w,h", [(1, 1), (5000, 1), (1, 700)])
def test_degenerate_images_work_in_gdet_detect(tmp_path, detector, w, h):
    image = png(tmp_path / f"im{w}x{h}.png", w, h)
    r = run(["detect", "--image", image, "--weights", detector, "--score-thr", "0", "--json", tmp_path / "d.json",
             "--out", tmp_path / "drawn"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert all(e["image_id"] == f"im{w}x{h}" for e in json.loads((tmp_path / "d.json").read_text()))
    assert read_image(tmp_path / "drawn" / f"im{w}x{h}.png").shape == (h, w, 3)


def test_degenerate_images_in_proposals_compute_and_test_det(tmp_path, detector):
    voc = tmp_path / "voc"
    for stem, (w, h) in {"one": (1, 1), "wide": (5000, 1), "tall": (2, 3000), "ok": (64, 48)}.items():
        make_voc(voc, stem=stem, w=w, h=h, image_ext=".png", xmin=1)
        png(voc / "JPEGImages" / f"{stem}.png", w, h)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("one\nwide\ntall\nok\n")
    (voc / "classes.txt").write_text("square\ndisc\ncat\n")
    props = tmp_path / "ss.npz"
    r = run(["proposals", "compute", "--data", voc, "--out", props, "--workers", "0", "--opt", "max_side=64"])
    assert r.exit_code == 0, r.stdout + r.stderr
    p = load_proposals(props)
    assert [p.size(i) for i in ("one", "wide", "tall")] == [(1, 1), (5000, 1), (2, 3000)]
    assert len(p["ok"][0]) > 0
    # the detector knows 2 classes; this dataset has 3 names -> use a 2-class classes.txt
    (voc / "classes.txt").write_text("square\ndisc\n")
    for stem in ("one", "wide", "tall", "ok"):
        xml = voc / "Annotations" / f"{stem}.xml"
        xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>disc</name>"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GDET_NO_PROGRESS": "1"}
    cmd = [sys.executable, str(ROOT / "tools" / "test_det.py"), "--data", str(voc), "--split", "val",
           "--weights", str(detector), "--proposals", str(props), "--out", str(tmp_path / "dets.json"),
           "--metrics", "voc", "--score-thr", "0", "--max-proposals", "10"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    # testing scores the ground truth as written (boxes past the 1-pixel images are not clipped): no warning
    assert "clipped" not in p.stderr and "DataWarning" not in p.stderr
    assert len(json.loads((tmp_path / "dets.json").read_text())) >= 0


def test_crops_of_degenerate_boxes_and_images():
    import torch

    from gdet.detection.crops import crop_regions

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [3.0, 3.0, 2.0, 2.0], [0.0, 0.0, 5000.0, 1.0]])
    for image in (torch.rand(3, 1, 1), torch.rand(3, 1, 5000), torch.rand(3, 5000, 1)):
        crops = crop_regions(image, boxes, 16, 2)
        assert crops.shape == (4, 3, 16, 16) and torch.isfinite(crops).all()
        # a 1x1 image is one colour: a crop of the whole image is that colour inside, the mean (0) outside
    one = torch.full((3, 1, 1), 0.25)
    c = crop_regions(one, boxes[:1], 16, 0)
    assert torch.allclose(c, torch.full_like(c, 0.25))


# ---------------------------------------------------------------------------------------------------------------
# 2. output files: permissions, crash safety, stale temporary files

def test_written_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        import gdet.io

        gdet.io._FILE_MODE = None  # read the umask set above
        save_json({"a": 1}, tmp_path / "a.json")
        with atomic_path(tmp_path / "b.png") as tmp:
            Image.new("RGB", (4, 4)).save(tmp)
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "b.png").stat().st_mode) == 0o644
        os.umask(0o077)
        gdet.io._FILE_MODE = None
        save_json({"a": 2}, tmp_path / "c.json")
        assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
        gdet.io._FILE_MODE = None


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_remove_stale_temps(tmp_path):
    for name in (".last.pth.0a1b2c3d.tmp", ".last.pth.deadbeef.tmp.pth", ".best.pth.0a1b2c3d.tmp",
                 "last.pth", ".last.pth.tmp", ".last.pth.0a1b2c3d.tmp.bak", "x.last.pth.0a1b2c3d.tmp"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path, "last.pth")
    assert sorted(p.name for p in removed) == [".last.pth.0a1b2c3d.tmp", ".last.pth.deadbeef.tmp.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".best.pth.0a1b2c3d.tmp", ".last.pth.0a1b2c3d.tmp.bak", ".last.pth.tmp", "last.pth",
        "x.last.pth.0a1b2c3d.tmp"]
    assert remove_stale_temps(tmp_path / "missing", "last.pth") == []
    # the writers' own temps match the pattern
    with atomic_write(tmp_path / "last.pth", "wb") as f:
        siblings = [p.name for p in tmp_path.iterdir() if p.name.startswith(".last.pth.") and p.name.endswith(".tmp")]
        f.write(b"new")
    assert len(siblings) == 2 and (tmp_path / "last.pth").read_bytes() == b"new"


# ---------------------------------------------------------------------------------------------------------------
# 9. warnings as one line

def test_warnings_print_as_one_line(capsys):
    saved = warnings.showwarning, warnings.formatwarning
    try:
        install_warning_format()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("data.json: clipped 3 boxes\npartly outside", DataWarning)
        err = capsys.readouterr().err
        assert err == "warning: data.json: clipped 3 boxes partly outside\n"
    finally:
        warnings.showwarning, warnings.formatwarning = saved


def test_no_cuda_runtime_note_of_torch_compile_is_dropped(caplog):
    """torch.compile on a CPU-only machine logs "No CUDA runtime is found"; commands drop that one note only."""
    import logging

    cpp = logging.getLogger("torch.utils.cpp_extension")
    saved = list(cpp.filters)
    try:
        cpp.filters.clear()  # as in a fresh process
        install_warning_format()
        install_warning_format()  # twice: one filter
        assert len(cpp.filters) == 1
        with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
            cpp.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
            cpp.warning("Error building extension 'x'")
        assert [r.getMessage() for r in caplog.records] == ["Error building extension 'x'"]
    finally:
        cpp.filters[:] = saved
