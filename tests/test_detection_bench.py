"""`tools/bench.py detect` smoke test with random stand-in proposals (no OpenCV ximgproc needed)."""
import torch
from click.testing import CliRunner

from gdet.benchmarks.detect import _random_boxes, main


def test_random_boxes_are_valid_and_inside_the_image():
    b = _random_boxes(500, 120, 80, seed=3)
    assert b.shape == (500, 4)
    assert bool((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all())
    assert bool((b[:, :2] >= 0).all() and (b[:, 2] <= 120 + 1e-4).all() and (b[:, 3] <= 80 + 1e-4).all())
    assert torch.equal(b, _random_boxes(500, 120, 80, seed=3))


def test_bench_detect_tiny_random_source():
    r = CliRunner().invoke(main, ["--device", "cpu", "--source", "random", "--proposals", "16", "--input-size", "32",
                                  "--chunk", "8", "--images", "1", "--workers", "1", "--repeats", "1"])
    assert r.exit_code == 0, r.output
    assert "16 proposals (random boxes)" in r.output and "proposals (random stand-in)" in r.output
    assert "network gdet / torchvision time ratio" in r.output and "img/s" in r.output.splitlines()[-1]
