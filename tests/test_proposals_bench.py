"""Smoke test of the proposal benchmark (`python tools/bench.py proposals`)."""
from click.testing import CliRunner

from gdet.benchmarks.proposals import main


def test_bench_smoke_and_bad_size():
    r = CliRunner().invoke(main, ["--images", "2", "--size", "96x64", "--skip-package", "--cores", "1"])
    assert r.exit_code == 0, r.output
    assert "ss (OpenCV fast)" in r.output and "multibox" in r.output and "images/s" in r.output
    assert "1.00x" in r.output  # the peer against itself
    r = CliRunner().invoke(main, ["--size", "big"], standalone_mode=False)
    assert r.exception is not None and "expected WxH" in str(r.exception)
