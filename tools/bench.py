#!/usr/bin/env python
"""Benchmarks: `python tools/bench.py {classify,proposals,detect,eval,all} [options]` prints a table per area."""
import importlib
import sys

import click

from gdet.cli import LazyGroup, run_guarded

AREAS = ["classify", "proposals", "detect", "eval"]


@click.group(cls=LazyGroup, lazy={a: f"gdet.benchmarks.{a}:main" for a in AREAS})
def bench():
    """gdet benchmarks; ratios are against the named peer measured in the same run."""


@bench.command("all")
@click.pass_context
def bench_all(ctx):
    """Run every benchmark with its defaults."""
    for area in AREAS:
        try:
            cmd = importlib.import_module(f"gdet.benchmarks.{area}").main
        except ModuleNotFoundError:
            continue
        click.echo(f"\n== {area} ==")
        ctx.invoke(cmd)


if __name__ == "__main__":
    run_guarded(bench.main, standalone_mode=True)
    sys.exit(0)
