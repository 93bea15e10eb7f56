"""The proposal benchmark (`gdet bench proposals`): its figures are consistent numbers, and bad input is one line
(for every `gdet bench` area's numeric options too)."""
import json

import pytest
from click.testing import CliRunner

from gdet.cli import main


def test_bench_figures_and_bad_size(tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", "proposals", "--images", "2", "--size", "96x64", "--skip-package",
                                  "--workers", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    rows = {m["method"]: m for m in res["methods"]}
    assert list(rows)[0] == "ss (OpenCV fast)" and any(name.startswith("multibox") for name in rows)
    assert "selectivesearch (package)" not in rows
    peer = rows["ss (OpenCV fast)"]["seconds_per_image"]
    for m in rows.values():
        assert m["seconds_per_image"] > 0 and m["boxes_per_image"] > 0
        assert m["vs_ss"] == pytest.approx(m["seconds_per_image"] / peer, rel=1e-12)
    assert rows["ss (OpenCV fast)"]["vs_ss"] == 1.0
    # the random MultiBox proposes a fixed number of boxes: its top-k (200 priors) after NMS, at most
    assert 0 < rows["multibox (random googlenet 224)"]["boxes_per_image"] <= 200
    cores = res["all_cores"]
    assert cores["processes"] == 1 and cores["images_per_second"] > 0
    assert cores["speedup"] == pytest.approx(cores["images_per_second"] * peer, rel=1e-12)
    # the printed table shows the same numbers
    assert f"{peer:8.3f}" in r.output
    r = CliRunner().invoke(main, ["bench", "proposals", "--size", "big"])
    assert r.exit_code == 1 and r.output == "error: --size 'big': expected WxH, e.g. 500x375\n"


@pytest.mark.parametrize("args, line", [
    (["proposals", "--size", "0x0"], "--size: each side must be between 32 and 8192 pixels, got 0x0"),
    (["proposals", "--size", "100000x100"], "--size: each side must be between 32 and 8192 pixels, got 100000x100"),
    (["proposals", "--images", "0"], "--images: 0 is not in the range x>=1"),
    (["proposals", "--workers", "0"], "--workers: 0 is not in the range x>=1"),
    (["eval", "--classes", "0"], "--classes: 0 is not in the range x>=1"),
    (["eval", "--dets", "-1"], "--dets: -1 is not in the range x>=1"),
    (["eval", "--images", "0"], "--images: 0 is not in the range x>=1"),
    (["shared", "--width", "-5"], "--width: -5 is not in the range 32<=x<=8192"),
    (["shared", "--repeats", "0"], "--repeats: 0 is not in the range x>=1"),
    (["classify", "--batch", "0"], "--batch: 0 is not in the range x>=1"),
    (["classify", "--size", "8"], "--size: 8 is not in the range 16<=x<=4096"),
    (["detect", "--proposals", "0"], "--proposals: 0 is not in the range x>=1"),
    (["detect", "--chunk", "0"], "--chunk: 0 is not in the range x>=1"),
    (["loader", "--batch", "0"], "--batch: 0 is not in the range x>=1"),
    (["loader", "--steps", "0"], "--steps: 0 is not in the range x>=1"),
])
def test_bench_option_ranges_are_one_line_errors(args, line):
    r = CliRunner().invoke(main, ["bench", *args])
    assert r.exit_code == 1 and r.stderr == f"error: {line}\n", r.output
