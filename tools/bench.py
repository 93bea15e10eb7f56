#!/usr/bin/env python
"""Benchmarks: the same command as `gdet bench` (`tools/bench.py {classify,proposals,detect,eval,loader,shared,all} -h`)."""
from gdet.benchmarks.cli import bench
from gdet.cli import run_tool

if __name__ == "__main__":
    run_tool(bench)
