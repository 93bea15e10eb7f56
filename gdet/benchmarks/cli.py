"""``gdet bench`` (= ``tools/bench.py``): one benchmark per area, each printing a table with ratios against the
named peer measured in the same run."""
from __future__ import annotations

import click

from gdet.cli import LazyGroup

AREAS: dict[str, tuple[str, str]] = {
    "classify": ("gdet.benchmarks.classify:main", "Classification throughput: gdet vs torchvision GoogLeNet."),
    "proposals": ("gdet.benchmarks.proposals:main", "Proposal speed: seconds per image of each method."),
    "detect": ("gdet.benchmarks.detect:main", "Detection pipeline: crops, network and proposals per image."),
    "eval": ("gdet.benchmarks.eval:main", "mAP evaluation speed: gdet's evaluators vs pycocotools and faster-coco-eval."),
    "loader": ("gdet.benchmarks.loader:main", "Training input: per-image CPU workers vs batched decode + augmentation."),
    "shared": ("gdet.benchmarks.shared_speed:main", "Detection network stage: R-CNN crops vs shared features."),
    "shared-views": ("gdet.benchmarks.shared_views:main", "Class accuracy on ground truth: R-CNN crops vs shared pooling."),
}


@click.group("bench", cls=LazyGroup, lazy=AREAS)
def bench():
    """gdet benchmarks; ratios are against the named peer measured in the same run."""


@bench.command("all")
@click.pass_context
def bench_all(ctx):
    """Run every benchmark with its defaults."""
    for area in AREAS:
        click.echo(f"\n== {area} ==")
        ctx.invoke(bench.get_command(ctx, area))
