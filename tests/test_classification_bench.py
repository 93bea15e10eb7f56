"""`tools/bench.py classify` smoke test: a table with gdet and torchvision rows and their ratio."""
from click.testing import CliRunner

from gdet.benchmarks.classify import main


def test_bench_classify_tiny():
    r = CliRunner().invoke(main, ["--device", "cpu", "--batch", "2", "--size", "64", "--iters", "1",
                                  "--repeats", "1", "--classes", "10"])
    assert r.exit_code == 0, r.output
    assert "gdet googlenet_tv" in r.output and "torchvision googlenet" in r.output
    assert "inference" in r.output.splitlines()[-1] and "x" in r.output.splitlines()[-1]
    bad = CliRunner().invoke(main, ["--device", "tpu"])
    assert bad.exit_code != 0
