"""Readers, writers, validation and decoding of gdet.data on tiny hand-written files."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gdet.data import (
    ClassificationDataset,
    DataWarning,
    DetectionSet,
    load_detection_set,
    read_coco,
    read_image,
    read_image_folder,
    read_voc,
    to_coco,
    write_coco,
    write_voc,
)
from gdet.errors import DataError
from gdet.structures import ImageRecord

XML = """<annotation>
  <filename>{stem}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>
"""
OBJ = """  <object><name>{name}</name><truncated>{trunc}</truncated><difficult>{diff}</difficult>
    <bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>
"""


def _jpg(path: Path, w=64, h=48, colour=(120, 30, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path, quality=90)


def make_voc(root: Path, images: dict, split="val", classes=None):
    """images: stem -> list of (name, (xmin, ymin, xmax, ymax), difficult, truncated); every image 64x48."""
    for stem, objs in images.items():
        _jpg(root / "JPEGImages" / f"{stem}.jpg")
        body = "".join(OBJ.format(name=n, b=b, diff=d, trunc=t) for n, b, d, t in objs)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{stem}.xml").write_text(XML.format(stem=stem, w=64, h=48, objects=body))
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in images))
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


@pytest.fixture
def voc(tmp_path):
    return make_voc(tmp_path / "voc", {
        "a": [("dog", (1, 1, 10, 20), 0, 0), ("cat", (5, 6, 30, 40), 1, 1)],
        "b": [("cat", (2.5, 3, 64, 48), 0, 0)],
        "empty": [],
    })


def test_read_voc_convention_flags_and_empty(voc):
    d = read_voc(voc, "val")
    assert d.class_names[:3] == ["aeroplane", "bicycle", "bird"] and d.num_classes == 20  # VOC default list
    assert [r.image_id for r in d.records] == ["a", "b", "empty"]
    a = d.records[0]
    # 1-based inclusive (1, 1, 10, 20) -> continuous (0, 0, 10, 20): width xmax - xmin + 1 = 10
    assert a.boxes.tolist() == [[0, 0, 10, 20], [4, 5, 30, 40]]
    assert a.labels.tolist() == [d.class_names.index("dog"), d.class_names.index("cat")]
    assert a.ignore.tolist() == [False, True]
    assert a.extra["truncated"] == [False, True] and a.extra["difficult"] == [False, True]
    assert d.records[1].boxes.tolist() == [[1.5, 2, 64, 48]]
    assert len(d.records[2]) == 0 and d.records[2].boxes.shape == (0, 4)
    assert (a.width, a.height) == (64, 48) and Path(a.path).name == "a.jpg"
    assert d.stats == {"images": 3, "objects": 3, "ignored": 1, "clipped": 0, "dropped": 0}


def test_voc_class_list_sources(voc, tmp_path):
    d = read_voc(voc, "val", class_names=["cat", "dog"])
    assert d.records[0].labels.tolist() == [1, 0]
    with pytest.raises(DataError, match=r"a\.xml: object 1: unknown class 'dog'"):
        read_voc(voc, "val", class_names=["cat"])
    other = make_voc(tmp_path / "o", {"x": [("zebra", (1, 1, 5, 5), 0, 0), ("ant", (1, 1, 5, 5), 0, 0)]})
    assert read_voc(other, "val").class_names == ["ant", "zebra"]  # not VOC names: sorted names found
    (other / "classes.txt").write_text("zebra\n")
    with pytest.raises(DataError, match="unknown class 'ant'"):
        read_voc(other, "val")


def test_voc_write_read_exact_roundtrip(voc, tmp_path):
    d = read_voc(voc, "val", class_names=["dog", "cat"])
    write_voc(d, tmp_path / "out", "val")
    e = read_voc(tmp_path / "out", "val")
    assert e.class_names == ["dog", "cat"]  # from classes.txt
    for r, s in zip(d.records, e.records):
        assert r.image_id == s.image_id and torch.equal(r.boxes, s.boxes)
        assert torch.equal(r.labels, s.labels) and torch.equal(r.ignore, s.ignore)
        assert r.extra.get("truncated") == s.extra.get("truncated")
        assert (tmp_path / "out" / "JPEGImages" / f"{r.image_id}.jpg").read_bytes() == Path(r.path).read_bytes()
    xml = (tmp_path / "out" / "Annotations" / "b.xml").read_text()
    assert "<xmin>2.5</xmin>" in xml and "<xmax>64</xmax>" in xml


COCO = {
    "images": [{"id": 7, "file_name": "img/p.jpg", "width": 64, "height": 48},
               {"id": 9, "file_name": "img/q.jpg", "width": 64, "height": 48},
               {"id": 3, "file_name": "img/r.jpg", "width": 64, "height": 48}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [1.0, 2.0, 10.0, 20.0], "area": 150.0, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 90, "bbox": [30, 10, 20, 30], "area": 600, "iscrowd": 1},
        {"id": 3, "image_id": 9, "category_id": 1, "bbox": [0.5, 0.25, 3.5, 4.75], "area": 16.625, "iscrowd": 0},
    ],
    "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
}


@pytest.fixture
def coco(tmp_path):
    for n in "pqr":
        _jpg(tmp_path / "img" / f"{n}.jpg")
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(COCO, indent=1))
    return path


def test_read_coco_noncontiguous_crowd_empty(coco):
    d = read_coco(coco)
    assert d.class_names == ["person", "dog", "toothbrush"] and d.category_ids == [1, 18, 90]
    assert [r.image_id for r in d.records] == [7, 9, 3]
    p = d.records[0]
    assert p.boxes.tolist() == [[1, 2, 11, 22], [30, 10, 50, 40]]
    assert p.labels.tolist() == [1, 2] and p.ignore.tolist() == [False, True]
    assert p.extra["iscrowd"] == [False, True] and p.extra["area"] == [150.0, 600.0]
    assert p.extra["file_name"] == "img/p.jpg"
    assert d.records[1].boxes.tolist() == [[0.5, 0.25, 4.0, 5.0]]
    assert len(d.records[2]) == 0
    assert load_detection_set(coco).stats == d.stats


def test_coco_voc_coco_roundtrip(coco, tmp_path):
    d = read_coco(coco)
    write_voc(d, tmp_path / "voc", "val")
    v = read_voc(tmp_path / "voc", "val")
    assert v.class_names == d.class_names and [r.image_id for r in v.records] == ["p", "q", "r"]
    v.category_ids = d.category_ids  # VOC has no category ids; restore them for the comparison
    write_coco(v, tmp_path / "back.json")
    e = read_coco(tmp_path / "back.json")
    assert e.category_ids == [1, 18, 90]
    for r, s in zip(d.records, e.records):
        assert torch.equal(r.boxes, s.boxes) and torch.equal(r.labels, s.labels) and torch.equal(r.ignore, s.ignore)
        assert r.extra.get("iscrowd", []) == s.extra.get("iscrowd", [])
        assert Path(s.path).resolve() == Path(r.path).resolve().parents[1] / "voc" / "JPEGImages" / Path(r.path).name


def test_voc_coco_voc_roundtrip(voc, tmp_path):
    d = read_voc(voc, "val", class_names=["dog", "cat"])
    write_coco(d, tmp_path / "c" / "val.json", image_dir=tmp_path / "c" / "images")
    c = load_detection_set(tmp_path / "c", split="val")
    assert c.format == "coco" and c.category_ids == [1, 2]
    ann = json.loads((tmp_path / "c" / "val.json").read_text())["annotations"]
    assert ann[1]["bbox"] == [4.0, 5.0, 26.0, 35.0] and ann[1]["ignore"] == 1 and ann[1]["iscrowd"] == 0
    write_voc(c, tmp_path / "v2", "val")
    e = read_voc(tmp_path / "v2", "val")
    assert [r.image_id for r in e.records] == ["a", "b", "empty"]
    for r, s in zip(d.records, e.records):
        assert torch.equal(r.boxes, s.boxes) and torch.equal(r.labels, s.labels) and torch.equal(r.ignore, s.ignore)
        assert r.extra.get("truncated", []) == s.extra.get("truncated", [])


def test_to_coco_uses_record_int_ids():
    recs = [ImageRecord(5, "x/a.jpg", 10, 10, [[0, 0, 5, 5]], [0], [False])]
    out = to_coco(DetectionSet(recs, ["a"], category_ids=[3]))
    assert out["images"][0]["id"] == 5 and out["annotations"][0]["category_id"] == 3
    assert out["annotations"][0]["bbox"] == [0.0, 0.0, 5.0, 5.0] and out["annotations"][0]["area"] == 25.0


def test_clipping_and_degenerate_counted_once(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [
        ("cat", (-4, 1, 10, 10), 0, 0),     # partly outside: clipped
        ("cat", (50, 40, 80, 60), 0, 0),    # partly outside: clipped
        ("cat", (20, 10, 15, 30), 0, 0),    # xmax < xmin: dropped
        ("cat", (70, 1, 90, 10), 0, 0),     # wholly outside: dropped
        ("cat", (3, 3, 9, 9), 0, 0),
    ]})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = read_voc(root, "val")
    msgs = [str(x.message) for x in w if issubclass(x.category, DataWarning)]
    assert len(msgs) == 1 and "clipped 2 boxes" in msgs[0] and "dropped 2 degenerate" in msgs[0]
    assert d.stats["clipped"] == 2 and d.stats["dropped"] == 2
    assert d.records[0].boxes.tolist() == [[0, 0, 10, 10], [49, 39, 64, 48], [2, 2, 9, 9]]
    assert "clipped 2" in d.summary()


def test_coco_clipping(coco, tmp_path):
    data = json.loads(coco.read_text())
    data["annotations"][0]["bbox"] = [-3, 40, 10, 20]
    data["annotations"][1]["bbox"] = [10, 10, 0, 5]
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.warns(DataWarning, match="clipped 1 boxes.*dropped 1 degenerate"):
        d = read_coco(tmp_path / "c.json")
    assert d.records[0].boxes.tolist() == [[0, 40, 7, 48]]


def test_errors_name_file_and_line(voc, coco, tmp_path):
    bad = voc / "Annotations" / "b.xml"
    bad.write_text("<annotation>\n  <filename>b.jpg</filename>\n  <object><name>cat</object>\n</annotation>\n")
    with pytest.raises(DataError, match=r"b\.xml: line 3, column \d+: malformed XML"):
        read_voc(voc, "val")
    bad.write_text(XML.format(stem="b", w=64, h=48, objects="<object><name>cat</name><bndbox><xmin>1</xmin>"
                                                              "<ymin>x</ymin><xmax>3</xmax><ymax>4</ymax></bndbox>"
                                                              "</object>"))
    with pytest.raises(DataError, match=r"b\.xml: object 1: <ymin> is not a finite number: 'x'"):
        read_voc(voc, "val")
    bad.write_text(XML.format(stem="b", w=64, h=48, objects=""))
    (voc / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"b\.xml: image not found: .*b\.jpg"):
        read_voc(voc, "val")
    with pytest.raises(DataError, match=r"train\.txt: split 'train' not found \(available: val\)"):
        read_voc(voc, "train")

    text = coco.read_text().replace('"width": 64', '"width" 64', 1)
    (tmp_path / "broken.json").write_text(text)
    with pytest.raises(DataError, match=r"broken\.json: line \d+, column \d+: invalid JSON"):
        read_coco(tmp_path / "broken.json")
    data = json.loads(coco.read_text())
    data["annotations"][0]["category_id"] = 5
    (tmp_path / "cat.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"cat\.json: annotations\[0\]: unknown category_id 5"):
        read_coco(tmp_path / "cat.json")
    (tmp_path / "img" / "q.jpg").unlink()
    with pytest.raises(DataError, match=r"inst\.json: image 9: image not found"):
        read_coco(coco)
    with pytest.raises(DataError, match="not a dataset"):
        load_detection_set(tmp_path, split="val")


# ------------------------------------------------------------------------------------------------ decoding
def test_read_image_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)

    gray = rgb[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8 and np.array_equal(out[..., 2], gray)

    rgba = np.dstack([rgb, np.full((6, 8), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)

    g16 = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (6, 8, 3) and np.array_equal(out[..., 0], np.rint(g16 * 255.0 / 65535).astype(np.uint8))


def test_read_image_exif_orientation(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # wide image, left half white
    a[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)  # upright: tall
    assert out[:15].mean() > 200 and out[25:].mean() < 50  # the white half is now on top


def test_read_image_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jpg: image not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        read_image(tmp_path / "bad.jpg")
    _jpg(tmp_path / "t.jpg", 64, 64)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.jpg: cannot decode image"):
        read_image(tmp_path / "t.jpg")


# ------------------------------------------------------------------------------------------ torch datasets
def test_image_folder_and_classification_dataset(tmp_path):
    for cls, n in (("b_cls", 2), ("a_cls", 1)):
        for i in range(n):
            _jpg(tmp_path / "f" / cls / f"{i}.jpg", 16, 12)
    paths, labels, names = read_image_folder(tmp_path / "f")
    assert names == ["a_cls", "b_cls"] and labels == [0, 1, 1] and paths[0].endswith("a_cls/0.jpg")
    ds = ClassificationDataset(paths, labels)
    img, y = ds[1]
    assert img.shape == (3, 12, 16) and img.dtype == torch.uint8 and y == 1
    x, ys = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert x.shape == (3, 3, 12, 16) and ys.tolist() == [0, 1, 1]
    (tmp_path / "f" / "classes.txt").write_text("b_cls\na_cls\nc_cls\n")  # an explicit order wins
    assert read_image_folder(tmp_path / "f")[1:] == ([0, 0, 1], ["b_cls", "a_cls", "c_cls"])
    with pytest.raises(DataError, match=r"unknown class folder\(s\) \['b_cls'\]"):
        read_image_folder(tmp_path / "f", class_names=["a_cls"])
    with pytest.raises(DataError, match="image folder not found"):
        read_image_folder(tmp_path / "none")
