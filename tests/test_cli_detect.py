"""`gdet detect` -> `gdet eval` and `gdet test` -> `gdet eval` on a tiny VOC set: the detect result file is a result
file, and both paths give the same mAP as the metrics `gdet test` prints."""
import json

import pytest
import torch
from click.testing import CliRunner

from gdet.cli import main
from gdet.data import load_detection_set
from helpers_detection import make_proposals, make_voc, save_detector, tiny_detector
from helpers_dist import torchrun


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_det")
    voc = make_voc(root, n_train=1, n_val=2)
    records = load_detection_set(voc, "train").records + load_detection_set(voc, "val").records
    props = make_proposals(records, root / "props.npz", per_image=12)
    ckpt = save_detector(tiny_detector(), root / "det.pth")
    return root, voc, props, ckpt


def _run(args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def test_detect_json_is_read_by_eval_and_matches_test(tiny, tmp_path):
    root, voc, props, ckpt = tiny
    common = ["--weights", ckpt, "--proposals", props, "--score-thr", "0.001", "--max-proposals", "2000",
              "--device", "cpu"]
    out = _run(["test", "--data", voc, "--split", "val", *common, "--out", tmp_path / "t.json",
                "--metrics", "voc", "--json", tmp_path / "m.json"])
    assert "wrote" in out and "mAP" in out
    # A glob of the val images (im001, im002; im000 is the train image). --cuda-graphs is ignored on a CPU.
    _run(["detect", "--image", f"{voc}/JPEGImages/im00[12].png", *common, "--json", tmp_path / "d.json",
          "--cuda-graphs"])
    maps = []
    for dets in ("t.json", "d.json"):
        _run(["eval", "--data", voc, "--split", "val", "--dets", tmp_path / dets, "--metrics", "voc",
              "--json", tmp_path / f"e_{dets}"])
        maps.append(json.loads((tmp_path / f"e_{dets}").read_text())["mAP"])
    tested = json.loads((tmp_path / "m.json").read_text())
    assert tested["images"] == 2 and tested["dets"] == str(tmp_path / "t.json")
    assert maps[0] == maps[1] == pytest.approx(tested["voc"]["mAP"], abs=1e-12)
    # Same detections, different id conventions: detect writes class names, test the dataset's category ids.
    d = json.loads((tmp_path / "d.json").read_text())
    t = json.loads((tmp_path / "t.json").read_text())
    assert len(d) == len(t) > 0 and {e["category_id"] for e in d} <= {"square", "disc"}
    assert [(e["image_id"], round(e["score"], 6)) for e in d] == [(e["image_id"], round(e["score"], 6)) for e in t]
    # Soft-NMS is an option of both commands, and they agree on it too.
    _run(["test", "--data", voc, "--split", "val", *common, "--soft-nms", "gaussian", "--out", tmp_path / "ts.json",
          "--metrics", ""])
    _run(["detect", "--image", f"{voc}/JPEGImages/im00[12].png", *common, "--soft-nms", "gaussian",
          "--json", tmp_path / "ds.json"])
    ts = json.loads((tmp_path / "ts.json").read_text())
    ds = json.loads((tmp_path / "ds.json").read_text())
    assert [(e["image_id"], round(e["score"], 6)) for e in ds] == [(e["image_id"], round(e["score"], 6)) for e in ts]
    assert len(ts) > len(t)  # overlapping boxes are down-weighted, not removed


def test_ensemble_of_detectors_with_other_classes_is_one_error_line(tiny, tmp_path):
    root, voc, props, ckpt = tiny
    other = save_detector(tiny_detector(num_classes=3), tmp_path / "other.pth")
    r = CliRunner().invoke(main, [str(a) for a in ["detect", "--image", f"{voc}/JPEGImages/im001.png",
                                                   "--weights", ckpt, "--weights", other, "--proposals", props]])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines() == [f"error: {other}: its classes differ from {ckpt}'s (classes c0, c1, c2, "
                                             "disc, square are in one and not the other); an ensemble needs one "
                                             "label set"]


def test_detect_folder_progress_and_duplicate_ids(tiny, tmp_path):
    root, voc, props, ckpt = tiny
    out = _run(["detect", "--image", voc / "JPEGImages", "--weights", ckpt, "--proposals", props,
                "--score-thr", "0", "--out", tmp_path / "png", "--device", "cpu"])
    assert out.count("detection(s)") == 3 and sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "im000.png", "im001.png", "im002.png"]
    # Two files with one stem cannot both be image "im001" in a result file.
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "im001.png").write_bytes((voc / "JPEGImages" / "im001.png").read_bytes())
    r = CliRunner().invoke(main, ["detect", "--image", str(voc / "JPEGImages" / "im001.png"), "--image",
                                  str(tmp_path / "dup"), "--weights", str(ckpt), "--json", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and r.output.startswith("error: ") and "same image id 'im001'" in r.output
    # A proposal file lacking an image names it.
    val_only = make_proposals(load_detection_set(voc, "val").records, tmp_path / "val.npz", per_image=12)
    r = CliRunner().invoke(main, ["test", "--data", str(voc), "--split", "train", "--weights", str(ckpt),
                                  "--proposals", str(val_only), "--out", str(tmp_path / "t.json"), "--device", "cpu"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith("error: ") and "im000" in r.output


def test_test_under_torchrun_writes_the_one_process_file(tmp_path):
    """`gdet test` with two gloo ranks: images dealt out, detections gathered, the same result file as one process."""
    voc = make_voc(tmp_path, n_train=0, n_val=3)  # 3 images: an uneven split over 2 ranks
    props = make_proposals(load_detection_set(voc, "val").records, tmp_path / "props.npz", per_image=12)
    ckpt = save_detector(tiny_detector(), tmp_path / "det.pth")
    args = ["test", "--data", voc, "--split", "val", "--weights", ckpt, "--proposals", props, "--score-thr",
            "0.001", "--device", "cpu", "--metrics", "voc"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank below: the same arithmetic, so the same bytes
    try:
        _run([*args, "--out", tmp_path / "one.json"])
    finally:
        torch.set_num_threads(threads)
    out = torchrun(["-m", "gdet.cli", *args, "--out", tmp_path / "two.json"], cwd=tmp_path)
    one = json.loads((tmp_path / "one.json").read_text())
    assert len(one) > 0
    assert (tmp_path / "two.json").read_text() == (tmp_path / "one.json").read_text()
    assert out.count("wrote") == 1  # rank 0 writes and reports


def test_proposal_workers_give_the_same_detections(tiny, tmp_path):
    """`--workers 1`: selective search runs in another process, ahead of the network; same result file."""
    root, voc, props, ckpt = tiny
    args = ["test", "--data", voc, "--split", "val", "--weights", ckpt, "--proposals", "ss", "--opt", "max_side=64",
            "--score-thr", "0.001", "--device", "cpu", "--metrics", ""]
    _run([*args, "--out", tmp_path / "inline.json"])
    _run([*args, "--workers", "1", "--out", tmp_path / "ahead.json"])
    assert len(json.loads((tmp_path / "inline.json").read_text())) > 0
    assert (tmp_path / "ahead.json").read_text() == (tmp_path / "inline.json").read_text()


def test_detect_and_test_default_to_the_detectors_training_proposals(tiny, tmp_path):
    root, voc, props, _ = tiny
    det = tiny_detector()
    plain = save_detector(det, tmp_path / "plain.pth")
    det.proposals = {"method": "ss", "max_side": 64, "sigma": 0.8}  # sigma at its default: not worth a mention
    rec = save_detector(det, tmp_path / "rec.pth")
    common = ["--image", f"{voc}/JPEGImages/im001.png", "--score-thr", "0.001", "--device", "cpu"]

    def scores(args, name):
        out = _run(["detect", *common, *args, "--json", tmp_path / name])
        return out, [round(e["score"], 6) for e in json.loads((tmp_path / name).read_text())]

    out, got = scores(["--weights", rec], "a.json")
    assert "proposals: ss with the detector's training options (max_side=64; --opt KEY=VALUE overrides)" in out
    assert got == scores(["--weights", plain, "--proposals", "ss", "--opt", "max_side=64"], "b.json")[1]
    # --opt overrides an option; another method or a file takes nothing from the detector.
    out, got = scores(["--weights", rec, "--opt", "max_side=96"], "c.json")
    assert "training options" not in out
    assert got == scores(["--weights", plain, "--opt", "max_side=96"], "d.json")[1]
    assert got != scores(["--weights", plain], "e.json")[1]  # ss's own max_side, 500
    assert "training options" not in scores(["--weights", rec, "--proposals", props], "f.json")[0]
    # gdet test takes the same default.
    out = _run(["test", "--data", voc, "--split", "val", "--weights", rec, "--limit", "1", "--device", "cpu",
                "--out", tmp_path / "t.json", "--metrics", ""])
    assert "proposals: ss with the detector's training options (max_side=64;" in out


def test_training_proposals_come_from_selective_search_files_only():
    from gdet.detection.inference import detector_proposals, training_proposals
    from gdet.proposals import ProposalSet

    def meta(**m):
        return ProposalSet.from_lists([], [], [], meta=m)

    assert training_proposals(meta(method="ss_quality", backend="opencv", mode="quality", max_side=320,
                                   data="d", split="train")) == {"method": "ss_quality", "max_side": 320}
    assert training_proposals(meta(method="multibox", weights="mb.pth")) is None  # its checkpoint is not in the file
    assert training_proposals(meta()) is None
    trained = type("M", (), {"proposals": {"method": "ss", "max_side": 320}})()
    assert detector_proposals(None, {}, trained)[:2] == ("ss", {"max_side": 320})
    assert detector_proposals("multibox", {"tiles": 3}, trained) == ("multibox", {"tiles": 3}, None)
    assert detector_proposals(None, None, type("M", (), {"proposals": None})()) == ("ss", {}, None)
    quality = type("M", (), {"proposals": {"method": "ss_quality", "max_side": 500}})()  # default options
    assert detector_proposals(None, {}, quality) == ("ss_quality", {"max_side": 500},
                                                     "proposals: ss_quality as the detector was trained")
    assert detector_proposals("ss_quality", {}, quality)[2] is None  # asked for: nothing to say
