"""`tools/bench.py classify`: the table has one row per network, finite positive times, and consistent ratios."""
import math

import pytest
from click.testing import CliRunner

from gdet.benchmarks.classify import GDET, PAPER, PAPER_EAGER, TV, format_table, main, run_benchmark, table_rows


def test_bench_classify_rows_are_consistent_numbers():
    name, rows = run_benchmark("cpu", batch=2, size=64, iters=1, repeats=2, classes=10, compile_what="none")
    assert name.startswith("CPU (")
    assert [r["model"] for r in rows] == [TV, GDET, PAPER_EAGER, PAPER]
    for r in rows:
        assert r["precision"] == "fp32" and r["batch"] == 2
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("ms", "ms_min", "ms_max", "img_s", "cpu_ms", "warmup_s"))
        assert r["ms_min"] <= r["ms"] <= r["ms_max"]
        assert r["img_s"] == pytest.approx(2 / (r["ms"] / 1000))
        assert r["vs_tv_eager"] == pytest.approx(rows[0]["ms"] / r["ms"])
        assert r["cpu_vs_tv_eager"] == pytest.approx(rows[0]["cpu_ms"] / r["cpu_ms"])
    assert rows[0]["vs_tv_eager"] == 1.0
    lines = format_table(rows)
    assert len(lines) == 1 + len(rows)
    # The printed speed-up of gdet's row reads back as the ratio of the printed times.
    cells = lines[2].split()
    assert float(cells[-4].rstrip("x")) == pytest.approx(rows[0]["ms"] / rows[1]["ms"], abs=0.006)


def test_table_rows_median_and_ratio():
    res = {TV: {"warmup_s": 1.0, "times_s": [0.3, 0.1, 0.2], "cpu_s": [0.4, 0.4, 0.4]},
           GDET: {"warmup_s": 0.5, "times_s": [0.05, 0.04, 0.5], "cpu_s": [0.1, 0.2, 0.3]}}
    rows = table_rows(res, "fp32", 4)
    assert rows[0]["ms"] == pytest.approx(200) and rows[1]["ms"] == pytest.approx(50)
    assert rows[1]["vs_tv_eager"] == pytest.approx(4.0) and rows[1]["cpu_vs_tv_eager"] == pytest.approx(2.0)
    assert rows[1]["ms_min"] == pytest.approx(40) and rows[1]["ms_max"] == pytest.approx(500)
    assert rows[1]["img_s"] == pytest.approx(80)


def test_bench_classify_cli_and_bad_input():
    r = CliRunner().invoke(main, ["--device", "cpu", "--batch", "1", "--size", "48", "--iters", "1", "--repeats", "1",
                                  "--classes", "5", "--compile", "none"])
    assert r.exit_code == 0, r.output
    summary = r.output.splitlines()[-1]
    assert summary.startswith("fp32: gdet runtime ") and "x torchvision eager" in summary
    assert CliRunner().invoke(main, ["--device", "tpu"]).exit_code != 0
    bad = CliRunner().invoke(main, ["--device", "cpu", "--precisions", "fp8", "--compile", "none"])
    assert bad.exit_code != 0 and "fp8" in str(bad.exception)
