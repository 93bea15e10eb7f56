"""Selective search wrapper, proposal files, resumable compute and the `gdet proposals` CLI."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gdet.errors import GdetError
from gdet.proposals import ProposalSet, build_proposer, list_proposers, load_proposals, save_proposals
from gdet.proposals import base as pbase
from gdet.proposals import selective_search as ssmod
from gdet.proposals.selective_search import SelectiveSearch, correct_package_boxes
from helpers_proposals import blob_image, write_voc


def test_package_box_correction():
    # The package reports (min_x, min_y, max_x - min_x, max_y - min_y) with inclusive maxima.
    rects = np.array([[0, 0, 127, 95], [5, 6, 0, 3], [10, 20, 4, 4]])
    got = correct_package_boxes(rects)
    want = torch.tensor([[0, 0, 128, 96], [5, 6, 6, 10], [10, 20, 15, 25]], dtype=torch.float32)
    assert torch.equal(got, want)


def test_package_backend_full_image_box_and_no_duplicates():
    img, _ = blob_image(0, 64, 80)
    p = build_proposer("selectivesearch", max_side=None, min_size=1)
    boxes, scores = p.propose(img)
    assert boxes.shape[0] > 0
    # The coarsest region is the whole image, exactly (the raw package output is one pixel short).
    assert torch.equal(boxes[0], torch.tensor([0.0, 0.0, 80.0, 64.0]))
    assert torch.unique(boxes, dim=0).shape[0] == boxes.shape[0]
    assert bool(((boxes[:, 2] - boxes[:, 0]) >= 1).all() and ((boxes[:, 3] - boxes[:, 1]) >= 1).all())
    assert bool((scores[:-1] >= scores[1:]).all())


def test_dedupe_keeps_first_occurrence_and_order():
    boxes = torch.tensor([[0, 0, 5, 5], [1, 1, 4, 4], [0, 0, 5, 5], [2, 2, 9, 9], [1, 1, 4, 4]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    b, s = pbase.dedupe_boxes(boxes, scores)
    assert torch.equal(b, boxes[[0, 1, 3]])
    assert torch.equal(s, scores[[0, 1, 3]])


def test_min_size_filter_and_degenerate():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 3, 10], [5, 5, 5, 20], [0, 0, 10, 4]], dtype=torch.float32)
    b, s = pbase.filter_small(boxes, torch.arange(4.0), 5)
    assert torch.equal(b, boxes[:1]) and s.tolist() == [0.0]
    b, _ = pbase.filter_small(boxes, torch.arange(4.0), 0)  # zero-width boxes always go
    assert b.shape[0] == 3


def test_resize_and_map_back():
    img = np.zeros((300, 1000, 3), np.uint8)
    small, scale = pbase.resize_longer_side(img, 500)
    assert small.shape[:2] == (150, 500) and scale == pytest.approx(0.5)
    back = pbase.map_boxes_back(torch.tensor([[10.0, 20.0, 500.0, 150.0]]), scale, 1000, 300)
    assert back.tolist() == [[20.0, 40.0, 1000.0, 300.0]]
    up, s2 = pbase.resize_longer_side(np.zeros((50, 40, 3), np.uint8), 100)
    assert up.shape[:2] == (100, 80) and s2 == 2.0
    same, s3 = pbase.resize_longer_side(img, None)
    assert same is img and s3 == 1.0


def test_resize_gives_boxes_in_original_coordinates():
    img, _ = blob_image(1, 96, 128)
    big = np.ascontiguousarray(np.repeat(np.repeat(img, 2, 0), 2, 1))  # 192 x 256, same content
    b1, _ = build_proposer("ss", max_side=128, min_size=1).propose(img)
    b2, _ = build_proposer("ss", max_side=128, min_size=1).propose(big)
    assert b2.max(0).values[2] <= 256 and b2.max(0).values[3] <= 192
    # Same resized content -> the same boxes, scaled by 2 (up to the resize's rounding).
    n = min(len(b1), len(b2), 20)
    assert n > 5 and torch.allclose(b2[:n], 2 * b1[:n], atol=2.0)


def test_opencv_modes_and_superpixel_scale():
    img, gt = blob_image(2, 96, 128)
    fast, sf = build_proposer("ss", max_side=None, min_size=1).propose(img)
    quality, _ = build_proposer("ss_quality", max_side=None, min_size=1).propose(img)
    twice, _ = build_proposer("ss", max_side=None, min_size=1, superpixel_scale=2).propose(img)
    assert quality.shape[0] > fast.shape[0] > twice.shape[0] > 0
    assert fast.dtype == torch.float32 and sf.shape == (fast.shape[0],)
    single = build_proposer("ss", mode="single", strategies="color,fill", max_side=None).propose(img)[0]
    assert single.shape[0] > 0
    capped, _ = build_proposer("ss", max_boxes=7).propose(img)
    assert capped.shape[0] == 7
    with pytest.raises(GdetError, match="strategies: must be 1 to 4 of color, texture, size, fill"):
        build_proposer("ss", strategies="colour")


def test_determinism_in_process():
    img, _ = blob_image(3, 96, 128)
    p = build_proposer("ss", max_side=None)
    b1, s1 = p.propose(img)
    import ctypes
    ctypes.CDLL(None).rand()  # disturb the C generator
    b2, s2 = p.propose(img)
    assert torch.equal(b1, b2) and torch.equal(s1, s2)


def test_determinism_across_processes(tmp_path):
    img, _ = blob_image(4, 96, 128)
    np.save(tmp_path / "img.npy", img)
    code = textwrap.dedent(f"""
        import hashlib, random, ctypes, numpy as np
        from gdet.proposals import build_proposer
        for _ in range(random.SystemRandom().randint(1, 50)):
            ctypes.CDLL(None).rand()
        b, s = build_proposer("ss", max_side=None).propose(np.load(r"{tmp_path / 'img.npy'}"))
        print(len(b), hashlib.sha1(b.numpy().tobytes() + s.numpy().tobytes()).hexdigest())
    """)
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    here, _ = build_proposer("ss", max_side=None).propose(img)
    assert outs[0] == outs[1] and outs[0].split()[0] == str(len(here))


def test_missing_ximgproc_message(monkeypatch):
    import cv2

    monkeypatch.delattr(cv2, "ximgproc", raising=False)
    with pytest.raises(GdetError) as e:
        SelectiveSearch()
    assert str(e.value) == ssmod.MISSING_XIMGPROC
    assert "pip uninstall -y opencv-python opencv-contrib-python-headless" in str(e.value)


def test_unknown_method_lists_names():
    with pytest.raises(GdetError, match="known methods: ss, ss_quality, selectivesearch, multibox, combined"):
        build_proposer("edgeboxes")
    with pytest.raises(GdetError, match="^proposal option colour: proposal method 'ss' has no such option"):
        build_proposer("ss", colour=1)
    assert "combined" in list_proposers()


def test_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    boxes = [torch.from_numpy(rng.random((n, 4)).astype(np.float32) * 100) for n in (5, 0, 3)]
    scores = [torch.linspace(1, 0, len(b)) for b in boxes]
    for ids in ([1, 7, 3], ["a", "b 2", "c/d"]):
        ps = ProposalSet.from_lists(ids, boxes, scores, [(10, 20), (30, 40), (50, 60)], {"method": "ss", "k": [1]})
        save_proposals(tmp_path / "p.npz", ps)
        back = load_proposals(tmp_path / "p.npz")
        assert back.image_ids == ids and back.meta == {"method": "ss", "k": [1]}
        for i, b, s in zip(ids, boxes, scores):
            bb, sb = back[i]
            assert torch.equal(bb, b) and torch.equal(sb, s)
        assert back.size(ids[2]) == (50, 60) and back.num_boxes().tolist() == [5, 0, 3]
    assert load_proposals(tmp_path / "p.npz")["b 2"][0].shape == (0, 4)
    with pytest.raises(KeyError):
        back["zzz"]


def test_file_errors(tmp_path):
    from gdet.errors import DataError

    with pytest.raises(DataError, match="not found"):
        load_proposals(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad.npz: not a proposal file \(a text file, not an .npz archive\)"):
        load_proposals(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="not a gdet proposal file"):
        load_proposals(tmp_path / "other.npz")


class _Counting(pbase.Proposer):
    name = "counting"
    calls: list = []

    def _propose(self, image):
        _Counting.calls.append(image.shape)
        return torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.ones(1)


def test_compute_is_resumable(tmp_path, monkeypatch, capfd):
    from gdet.proposals import compute as comp
    import gdet.proposals as gp

    root = write_voc(tmp_path / "voc", n=4)
    from gdet.data.dataset import load_detection_set

    items = [(r.image_id, r.path) for r in load_detection_set(root, "val").records]
    out = tmp_path / "p.npz"
    # A first run that stops on a bad image after finishing some images.
    bad = items[:2] + [("broken", str(tmp_path / "missing.png"))] + items[2:]
    monkeypatch.delenv("GDET_NO_PROGRESS", raising=False)
    capfd.readouterr()
    with pytest.raises(GdetError, match="rerun to resume"):
        comp.compute_proposals(bad, "ss", out, {"max_side": 64}, workers=0)
    assert not out.exists() and len(list(comp.parts_dir(out).glob("*.npz"))) == 2
    bar = capfd.readouterr().err  # the progress bar is erased, not left above the error that follows
    assert "proposals ss" in bar and "\n" not in bar and bar.endswith("\r")
    monkeypatch.setenv("GDET_NO_PROGRESS", "1")
    # The rerun computes only the other images (counted through a stub method under the same settings).
    monkeypatch.setitem(gp.PROPOSERS, "ss", lambda **kw: _Wrap(SelectiveSearch(**kw)))
    _Counting.calls.clear()
    res = comp.compute_proposals(items, "ss", out, {"max_side": 64}, workers=0)
    assert res["computed"] == 2 and res["reused"] == 2 and len(_Counting.calls) == 2
    assert not comp.parts_dir(out).exists()
    props = load_proposals(out)
    assert props.image_ids == [i for i, _ in items] and props.meta["max_side"] == 64
    # A third run with the output complete does nothing; other settings are refused.
    _Counting.calls.clear()
    assert comp.compute_proposals(items, "ss", out, {"max_side": 64}, workers=0)["computed"] == 0
    assert _Counting.calls == []
    with pytest.raises(GdetError, match="other method settings"):
        comp.compute_proposals(items, "ss", out, {"max_side": 32}, workers=0)


class _Wrap(pbase.Proposer):
    def __init__(self, inner):
        self.inner, self.name = inner, inner.name

    def config(self):
        return self.inner.config()

    def _propose(self, image):
        _Counting.calls.append(image.shape)
        return self.inner.propose(image)


def test_compute_parallel_matches_serial(tmp_path):
    from gdet.proposals.compute import compute_proposals

    root = write_voc(tmp_path / "voc", n=3)
    from gdet.data.dataset import load_detection_set

    items = [(r.image_id, r.path) for r in load_detection_set(root, "val").records]
    compute_proposals(items, "ss", tmp_path / "a.npz", {"max_side": 96}, workers=0)
    compute_proposals(items, "ss", tmp_path / "b.npz", {"max_side": 96}, workers=2)
    a, b = load_proposals(tmp_path / "a.npz"), load_proposals(tmp_path / "b.npz")
    assert a.image_ids == b.image_ids
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)


def test_cli_compute_and_info(tmp_path):
    from gdet.cli import main

    root = write_voc(tmp_path / "voc", n=2)
    out = tmp_path / "ss.npz"
    r = CliRunner().invoke(main, ["proposals", "compute", "--data", str(root), "--method", "ss", "--out", str(out),
                                  "--workers", "0", "--opt", "max_side=96", "--opt", "min_size=4"])
    assert r.exit_code == 0, r.output
    assert "2 images (2 computed, 0 reused)" in r.output
    props = load_proposals(out)
    assert len(props) == 2 and props.meta["min_size"] == 4.0 and props.meta["split"] == "val"
    r = CliRunner().invoke(main, ["proposals", "info", str(out)])
    assert r.exit_code == 0 and "2 images" in r.output


def test_cli_bad_inputs(tmp_path):
    from gdet.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["proposals", "compute", "--data", str(tmp_path / "nowhere"), "--out",
                             str(tmp_path / "x.npz")])
    assert r.exit_code == 1 and "error:" in r.output and "nowhere" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(main, ["proposals", "compute", "--data", str(tmp_path), "--method", "multibox", "--out",
                             str(tmp_path / "x.npz")])
    assert r.exit_code == 1 and "needs --proposal-weights" in r.output
    (tmp_path / "bad.npz").write_text("junk")
    r = runner.invoke(main, ["proposals", "info", str(tmp_path / "bad.npz")])
    assert r.exit_code == 1 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1


def test_combine_rule_and_cli(tmp_path):
    from gdet.cli import main
    from gdet.proposals.combined import combine, combine_sets

    mb = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30], [50.0, 50, 60, 60]])
    mbs = torch.tensor([0.9, 0.5, 0.1])
    ss = torch.tensor([[0.0, 0, 10, 10.5], [0.0, 0, 40, 40], [20.0, 20, 30, 30], [70.0, 70, 90, 90]])
    sss = torch.tensor([1.0, 0.75, 0.5, 0.25])
    b, s = combine(mb, mbs, ss, sss, top_k=2, dup_iou=0.9)
    # MultiBox's top 2 first; the SS near-copy of box 0 (IoU 0.95) and the exact copy of box 1 go.
    assert b.tolist() == [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 40, 40], [70, 70, 90, 90]]
    assert s.tolist() == pytest.approx([1.9, 1.5, 0.75, 0.25])
    a = ProposalSet.from_lists(["x"], [ss], [sss], [(100, 100)], {"method": "ss"})
    m = ProposalSet.from_lists(["x"], [mb], [mbs], [(100, 100)], {"method": "multibox"})
    c = combine_sets(a, m, top_k=2)
    assert torch.equal(c["x"][0], b) and c.meta["method"] == "combined"
    save_proposals(tmp_path / "a.npz", a)
    save_proposals(tmp_path / "m.npz", m)
    r = CliRunner().invoke(main, ["proposals", "combine", "--ss", str(tmp_path / "a.npz"), "--multibox",
                                  str(tmp_path / "m.npz"), "--out", str(tmp_path / "c.npz"), "--top-k", "2"])
    assert r.exit_code == 0, r.output
    assert torch.equal(load_proposals(tmp_path / "c.npz")["x"][0], b)
    save_proposals(tmp_path / "e.npz", ProposalSet.from_lists([], [], []))
    r = CliRunner().invoke(main, ["proposals", "combine", "--ss", str(tmp_path / "a.npz"), "--multibox",
                                  str(tmp_path / "e.npz"), "--out", str(tmp_path / "c2.npz")])
    assert r.exit_code == 1 and "no MultiBox proposals" in r.output


@pytest.mark.parametrize("opt, line", [
    ("max_side=abc", "--opt max_side: must be an integer in [0, 16384] or null, got 'abc'"),
    ("max_side=[1,2]", "--opt max_side: must be an integer in [0, 16384] or null, got [1, 2]"),
    ("max_side=.nan", "--opt max_side: must be an integer in [0, 16384] or null, got nan"),
    ("max_side=.inf", "--opt max_side: must be an integer in [0, 16384] or null, got inf"),
    ("max_side=-5", "--opt max_side: must be an integer in [0, 16384] or null, got -5"),
    ("max_side=2.5", "--opt max_side: must be an integer in [0, 16384] or null, got 2.5"),
    ("superpixel_scale=abc", "--opt superpixel_scale: must be a positive number, got 'abc'"),
    ("superpixel_scale=.nan", "--opt superpixel_scale: must be a positive number, got nan"),
    ("superpixel_scale=.inf", "--opt superpixel_scale: must be a positive number, got inf"),
    ("max_boxes=abc", "--opt max_boxes: must be a positive integer or null, got 'abc'"),
    ("max_boxes=-1", "--opt max_boxes: must be a positive integer or null, got -1"),
    ("min_size=-5", "--opt min_size: must be a non-negative number, got -5"),
    ("sigma=-1", "--opt sigma: must be a non-negative number, got -1"),
    ("base_k=-100", "--opt base_k: must be a positive integer, got -100"),
    ("seed=-1", "--opt seed: must be an integer in [0, 4294967295], got -1"),
    ("strategies=colour", "--opt strategies: must be 1 to 4 of color, texture, size, fill (e.g. color,fill) or "
                          "null, got 'colour'"),
    ("mode=slow", "--opt mode: unknown option 'slow' (use fast, quality, single)"),
    ("backend=opencv", "--opt backend: cannot be set: the method name chooses it (ss, ss_quality: OpenCV; "
                       "selectivesearch: the package)"),
    ("max_sid=5", "--opt max_sid: proposal method 'ss' has no such option (did you mean 'max_side'?)"),
])
def test_cli_compute_refuses_bad_method_options(tmp_path, opt, line):
    """Every method option's type and range is checked in one place, before the data is read or a worker starts:
    one line naming the option, exit code 1."""
    from gdet.cli import main

    root = write_voc(tmp_path / "voc", n=2)
    r = CliRunner().invoke(main, ["proposals", "compute", "--data", str(root), "--method", "ss", "--out",
                                  str(tmp_path / "x.npz"), "--workers", "2", "--opt", opt])
    assert r.exit_code == 1 and r.stderr == f"error: {line}\n", r.output
    assert not (tmp_path / "x.npz.parts").exists()


def test_method_options_are_checked_by_build_proposer():
    from gdet.proposals import check_options

    with pytest.raises(GdetError, match=r"^proposal option max_boxes: must be a positive integer or null, got -1$"):
        build_proposer("ss", max_boxes=-1)
    with pytest.raises(GdetError, match=r"^proposal option tiles: must be an integer in \[1, 16\], got 0$"):
        build_proposer("multibox", weights="none.pth", tiles=0)
    with pytest.raises(GdetError, match=r"^proposal option input_size: cannot be set: the MultiBox checkpoint sets"):
        build_proposer("multibox", weights="none.pth", input_size=320)
    with pytest.raises(GdetError, match=r"^--opt multibox_kwargs\.nms_iou: must be a number in \[0, 1\], got 2$"):
        check_options("combined", {"multibox_kwargs": {"nms_iou": 2}}, "--opt ")
    with pytest.raises(GdetError, match=r"^--opt mode: cannot be set: the selective search mode of 'combined' is"):
        check_options("combined", {"mode": "quality"}, "--opt ")
    # Good values pass; whole numbers written as floats become ints (a float slice bound would fail later).
    assert check_options("ss", {"max_side": 320.0, "max_boxes": 5.0, "min_size": 4, "strategies": "color,fill"}) \
        == {"max_side": 320, "max_boxes": 5, "min_size": 4.0, "strategies": "color,fill"}
    assert check_options("ss", {"max_side": None, "max_boxes": None}) == {"max_side": None, "max_boxes": None}
    img, _ = blob_image(0, 64, 80)
    boxes, _ = build_proposer("ss", max_side=64.0, max_boxes=3.0).propose(img)
    assert boxes.shape[0] == 3


def test_cli_compute_weights_only_for_multibox(tmp_path):
    from gdet.cli import main

    r = CliRunner().invoke(main, ["proposals", "compute", "--data", str(tmp_path), "--method", "ss",
                                  "--proposal-weights", str(tmp_path / "mb.pth"), "--out", str(tmp_path / "x.npz")])
    assert r.exit_code == 1
    assert r.stderr == ("error: --proposal-weights: method 'ss' uses no MultiBox checkpoint (multibox and combined "
                        "do)\n")


def test_proposal_file_that_is_not_an_npz_archive(tmp_path):
    """A .npy array, a JSON or text file, a pickle named .npz: said so, not numpy's TypeError or its advice to
    load pickles unsafely."""
    import pickle

    from gdet.cli import main

    np.save(tmp_path / "arr.npy", np.zeros((3, 4), np.float32))
    (tmp_path / "arr.npy").rename(tmp_path / "x.npz")
    (tmp_path / "j.npz").write_text('{"boxes": [[0, 0, 1, 1]]}\n')
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"boxes": [0.0]}, protocol=2))
    (tmp_path / "e.npz").write_bytes(b"")
    for name, kind in (("x", "a .npy array"), ("j", "a text file"), ("p", "a Python pickle"),
                       ("e", "an empty file")):
        path = tmp_path / f"{name}.npz"
        r = CliRunner().invoke(main, ["proposals", "info", str(path)])
        assert r.exit_code == 1
        assert r.stderr == f"error: {path}: not a proposal file ({kind}, not an .npz archive)\n"
    r = CliRunner().invoke(main, ["proposals", "eval", "--data", str(write_voc(tmp_path / "voc", n=1)),
                                  "--proposals", str(tmp_path / "x.npz")])
    assert r.exit_code == 1 and r.stderr.endswith("x.npz: not a proposal file (a .npy array, not an .npz archive)\n")


@pytest.mark.parametrize("value", ["nan", "-1", "2", "inf"])
def test_cli_combine_dup_iou_range(tmp_path, value):
    from gdet.cli import main

    a = ProposalSet.from_lists(["x"], [torch.tensor([[0.0, 0, 10, 10]])], [torch.ones(1)], [(20, 20)])
    save_proposals(tmp_path / "a.npz", a)
    args = ["proposals", "combine", "--ss", str(tmp_path / "a.npz"), "--multibox", str(tmp_path / "a.npz"),
            "--out", str(tmp_path / "c.npz")]
    r = CliRunner().invoke(main, [*args, "--dup-iou", value])
    assert r.exit_code == 1 and r.stderr.startswith("error: --dup-iou: ") and len(r.stderr.splitlines()) == 1
    assert "is not in the range 0" in r.stderr and not (tmp_path / "c.npz").exists()
    r = CliRunner().invoke(main, [*args, "--dup-iou", "1"])
    assert r.exit_code == 0, r.output
