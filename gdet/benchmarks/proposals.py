"""Proposal speed: seconds per image of each method on one core, and images/s of selective search on all cores.

`gdet bench proposals [--images 10] [--size 500x375] [--proposal-weights MULTIBOX.pth] [--device cpu]`.
Images come from the synthetic benchmark's generator (textured shapes on real photographs), so the count of
regions, which drives selective search's cost, is realistic. Ratios are against OpenCV fast mode ("ss").
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time

import click
import cv2
import numpy as np
import torch

from gdet.cli import write_json
from gdet.data.synth import MAX_SIDE, SynthConfig, generate_image
from gdet.errors import GdetError
from gdet.proposals import build_proposer
from gdet.proposals.multibox import MultiBoxProposer, build_multibox


def _images(n: int, width: int, height: int) -> list[np.ndarray]:
    cfg = SynthConfig(images=n, width=width, height=height, seed=12345)
    return [generate_image(cfg, i)[0] for i in range(n)]


def _time(proposer, images: list[np.ndarray]) -> tuple[float, float]:
    """(seconds per image, boxes per image); the first image warms up and is not counted if there are more."""
    proposer.propose(images[0])
    timed = images[1:] if len(images) > 1 else images
    t0 = time.perf_counter()
    n = sum(int(proposer.propose(im)[0].shape[0]) for im in timed)
    return (time.perf_counter() - t0) / len(timed), n / len(timed)


_POOL_PROPOSER = None


def _pool_init():
    global _POOL_PROPOSER
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    _POOL_PROPOSER = build_proposer("ss")


def _pool_work(image):
    return int(_POOL_PROPOSER.propose(image)[0].shape[0])


def _random_multibox(device: str):
    model = build_multibox(backbone="googlenet", priors=torch.rand(200, 4).sort(-1).values)
    return MultiBoxProposer(model, 224, device=device)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--images", default=10, show_default=True, type=click.IntRange(min=1),
              help="Images per method (the first is a warm-up).")
@click.option("--size", default="500x375", show_default=True, help=f"Image size WxH (each side 32 to {MAX_SIDE}).")
@click.option("--proposal-weights", "weights", default=None, type=click.Path(dir_okay=False),
              help="A MultiBox checkpoint (default: random googlenet at 224 px; the speed does not depend on "
                   "the weights).")
@click.option("--device", default="cpu", show_default=True, help="Where MultiBox runs.")
@click.option("--skip-package", is_flag=True, help="Skip the slow pure-Python selectivesearch package.")
@click.option("--workers", "--cores", "cores", default=None, type=click.IntRange(min=1),
              help="Worker processes for the all-cores run (default: one per CPU).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write the figures as JSON (- for stdout).")
def main(images, size, weights, device, skip_package, cores, json_path):
    """Seconds per image for each proposal method, and images/s with all CPU cores."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise GdetError(f"--size {size!r}: expected WxH, e.g. 500x375") from None
    if not (32 <= width <= MAX_SIDE and 32 <= height <= MAX_SIDE):
        raise GdetError(f"--size: each side must be between 32 and {MAX_SIDE} pixels, got {width}x{height}")
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    ims = _images(images, width, height)
    methods = [("ss (OpenCV fast)", lambda: build_proposer("ss")),
               ("ss, superpixels x2", lambda: build_proposer("ss", superpixel_scale=2)),
               ("ss_quality (OpenCV)", lambda: build_proposer("ss_quality"))]
    if not skip_package:
        methods.append(("selectivesearch (package)", lambda: build_proposer("selectivesearch")))
    methods.append(("multibox" + ("" if weights else " (random googlenet 224)"),
                    (lambda: build_proposer("multibox", weights=weights, device=device)) if weights
                    else (lambda: _random_multibox(device))))
    click.echo(f"{images} images of {width}x{height}, one thread per method; MultiBox on {device}")
    rows = [(name, *_time(make(), ims)) for name, make in methods]
    peer = rows[0][1]
    w = max(len(r[0]) for r in rows)
    click.echo(f"{'method':<{w}}  {'s/image':>8}  {'boxes/image':>11}  {'vs ss (fast)':>12}")
    for name, t, n in rows:
        click.echo(f"{name:<{w}}  {t:8.3f}  {n:11.1f}  {t / peer:11.2f}x")
    procs = cores or os.cpu_count() or 1
    batch = ims * max(1, (2 * procs) // len(ims) + 1)
    with mp.get_context("spawn").Pool(procs, initializer=_pool_init) as pool:
        pool.map(_pool_work, batch[:procs])  # warm-up: imports and OpenCV start-up in every worker
        t0 = time.perf_counter()
        pool.map(_pool_work, batch, chunksize=1)
        dt = time.perf_counter() - t0
    plural = "es" if procs != 1 else ""
    click.echo(f"ss (OpenCV fast) on {procs} process{plural}: {len(batch) / dt:.2f} images/s "
               f"({len(batch) / dt * peer:.2f}x one core)")
    if json_path:
        write_json({"images": images, "size": [width, height], "device": device,
                    "methods": [{"method": name, "seconds_per_image": t, "boxes_per_image": n, "vs_ss": t / peer}
                                for name, t, n in rows],
                    "all_cores": {"processes": procs, "images_per_second": len(batch) / dt,
                                  "speedup": len(batch) / dt * peer}}, json_path)
