"""`tools/bench.py detect` with random stand-in proposals (no OpenCV ximgproc needed)."""
import math
import re

import pytest
import torch
from click.testing import CliRunner

from gdet.benchmarks.detect import NET_EAGER, NET_RUNTIME, NET_TV, _random_boxes, main, run_benchmark


def test_random_boxes_are_valid_and_inside_the_image():
    b = _random_boxes(500, 120, 80, seed=3)
    assert b.shape == (500, 4)
    assert bool((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all())
    assert bool((b[:, :2] >= 0).all() and (b[:, 2] <= 120 + 1e-4).all() and (b[:, 3] <= 80 + 1e-4).all())
    assert torch.equal(b, _random_boxes(500, 120, 80, seed=3))


def test_bench_detect_numbers():
    r = run_benchmark("cpu", n_props=12, input_size=32, chunk=5, n_images=1, workers=1, repeats=1, source="random",
                      compile_what="none")
    names = [k for k, _ in r["stages"]]
    assert names == ["proposals (random stand-in)", "crops (roi_align)", "network (gdet runtime)",
                     "NMS (postprocess)", "sum of stages"]
    times = dict(r["stages"])
    assert all(math.isfinite(v) and v > 0 for v in times.values())
    assert times["sum of stages"] == pytest.approx(sum(v for k, v in r["stages"][:4]))
    nets = {k: (t, w, lo, hi) for k, t, w, lo, hi in r["network"]}
    assert list(nets) == [NET_RUNTIME, NET_EAGER, NET_TV]
    assert nets[NET_RUNTIME][0] == times["network (gdet runtime)"]
    assert all(w > 0 and 0 < lo <= t <= hi for t, w, lo, hi in nets.values())
    assert r["serial_s"] > 0 and r["overlap_s"] > 0 and r["images"] == 1
    assert r["shared_s"] > 0 and r["shared_mode"].startswith("shared (scales [600], max 1000, stage inception4e")


def test_bench_detect_cli_tiny_random_source():
    r = CliRunner().invoke(main, ["--device", "cpu", "--source", "random", "--proposals", "8", "--input-size", "32",
                                  "--chunk", "8", "--images", "1", "--workers", "1", "--repeats", "1",
                                  "--compile", "none"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "8 proposals (random boxes)" in lines[0]
    rows = {ln[:36].strip(): ln[36:].split() for ln in lines if ln.startswith(("gdet ", "torchvision "))}
    t_rt, t_tv = float(rows[NET_RUNTIME][0]), float(rows[NET_TV][0])
    assert t_rt > 0 and t_tv > 0
    assert float(rows[NET_TV][1].rstrip("x")) == pytest.approx(t_tv / t_rt, rel=0.02, abs=0.01)
    assert "img/s" in lines[-1]
    shared = next(ln for ln in lines if ln.startswith("same weights, shared ("))
    pattern = r"([\d.]+) ms/image against .* ([\d.]+) ms, speed-up x([\d.]+)"
    t_sh, t_rcnn, speedup = (float(v) for v in re.findall(pattern, shared)[0])
    crops = float(next(ln for ln in lines if ln.startswith("crops (roi_align)")).split()[-1])
    assert t_rcnn == pytest.approx(crops + t_rt, abs=0.11)
    assert speedup == pytest.approx(t_rcnn / t_sh, rel=0.02, abs=0.01)
