"""Network-stage time per image: R-CNN mode (the whole network on every warped proposal) vs shared-feature mode
(trunk once per image, remaining stages per region), on the same random-initialised detector.

R-CNN mode is ``Detector.score_regions`` (crops + network, in chunks of 256 regions, so its time is linear in the
number of proposals): on a CPU it is timed on ``--rcnn-sample`` proposals and scaled to ``N`` unless
``--rcnn-full``; the table says which. Shared mode is ``SharedDetectorNet.score_regions`` on all ``N`` proposals.
Run: ``python -m gdet.benchmarks.shared_speed --backbones googlenet,googlenet_tv --proposals 2000,500``.
"""
from __future__ import annotations

import time

import click
import numpy as np
import torch

VOC_CLASSES = 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device: torch.device, repeats: int, clock: str = "wall") -> float:
    """Median seconds of ``repeats`` calls; ``clock="cpu"`` counts this process's CPU time instead of wall time
    (with one thread, a figure that other jobs on a shared machine do not inflate)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    times = []
    for _ in range(repeats):
        _sync(device)
        t = now()
        fn()
        _sync(device)
        times.append(now() - t)
    return float(np.median(times))


def random_boxes(n: int, width: int, height: int, seed: int = 0) -> torch.Tensor:
    """``n`` random boxes inside a ``width x height`` image, sides 5-100% of the image (proposal stand-ins).

    Returns:
        Tensor[n, 4] (x1, y1, x2, y2) in pixels.
    """
    g = torch.Generator().manual_seed(seed)
    wh = (0.05 + 0.95 * torch.rand((n, 2), generator=g)) * torch.tensor([width, height])
    xy = torch.rand((n, 2), generator=g) * (torch.tensor([width, height]) - wh)
    return torch.cat([xy, xy + wh], 1)


def measure(backbone: str, proposals: list[int], *, width: int = 640, height: int = 480,
            scales: tuple[int, ...] = (600,), max_size: int | None = 1000, pooled_size: int | None = None,
            stage: str | None = None, sampling_ratio: int = 1, input_size: int | None = None,
            rcnn_sample: int | None = 128, repeats: int = 1, device: str = "cpu", clock: str = "wall",
            precision: str | None = "auto", chunk_size: int | None = None, compile: bool = False,
            cuda_graphs: bool = False) -> list[dict]:
    """Seconds per image of the network stage in both modes.

    Args:
        backbone: registry name; the detector is random-initialised with 20 classes (VOC) and a box head.
        proposals: numbers of proposals per image to time.
        width, height: image size.
        scales, max_size, pooled_size, stage, sampling_ratio: shared-mode settings (see
            :class:`~gdet.detection.shared.SharedDetectorNet`).
        input_size: R-CNN mode's warped crop side (default: the backbone's); also sets the default pooled size.
        rcnn_sample: time R-CNN mode on this many proposals and scale linearly (None: on all of them).
        repeats: timed calls per measurement after one small warm-up call (median reported).
        clock: ``wall`` or ``cpu`` (process CPU time; use with one thread).
        precision: the inference runtime's precision for both modes (``auto``: fp16 channels-last on CUDA, fp32
            on a CPU), or None for the eager fp32 networks without the runtime.
        chunk_size: regions per network call in both modes (default: the detector's, 256).
        compile: ``torch.compile`` both modes' networks (R-CNN: the whole network; shared: the per-region head).
        cuda_graphs: on CUDA, replay both modes' networks from CUDA graphs (R-CNN: per chunk; shared: the trunk
            per image size and the head per chunk).
    Returns:
        one dict per ``N``: ``backbone, proposals, rcnn_s, rcnn_measured_on, shared_s, trunk_s, speedup``, and
        ``pool_s``, ``head_s``: shared mode's RoIAlign and per-region network on all ``N``; ``pool_tv_s``: the same
        RoIAlign through torchvision's kernel (the peer of gdet's NHWC kernel on CUDA and of its embedding-bag
        RoIAlign on a CPU), None where gdet uses torchvision's itself.
    """
    from gdet.detection.model import build_detector
    from gdet.detection.roi_align import bags_available
    from gdet.engine import resolve_device
    from gdet.runtime import optimize

    dev = resolve_device(device)
    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(VOC_CLASSES)]
    common = dict(bbox_reg=True, input_size=input_size, backbone_kwargs={"aux_logits": False},
                  **({"chunk_size": chunk_size} if chunk_size else {}))
    det = build_detector(backbone, classes, **common).eval()
    shared_opts = {"scales": list(scales), "max_size": max_size, "pooled_size": pooled_size, "stage": stage}
    sh = build_detector(backbone, classes, mode="shared", shared=shared_opts, sampling_ratio=sampling_ratio,
                        **common).eval()
    sh.load_state_dict(det.state_dict())
    # Both modes run as gdet runs them: through the inference runtime (batch norm folded, 1x1s fused, fp16
    # channels-last on CUDA, fp32 on a CPU) unless precision is None (the plain eager network in fp32).
    if precision is None:
        det, sh = det.to(dev), sh.to(dev)
    else:
        det, sh = (optimize(m, device=dev, precision=precision, compile=compile, cuda_graphs=cuda_graphs)
                   for m in (det, sh))
    shared = sh.shared_net
    image = torch.rand((3, height, width), generator=torch.Generator().manual_seed(1)).to(dev)
    boxes_all = random_boxes(max(proposals), width, height).to(dev)
    cuda = dev.type == "cuda"
    for _ in range(2 if cuda else 1):  # warm-up: allocator, kernels (on CUDA, cuDNN's choice at the timed sizes)
        det.score_regions(image, boxes_all[:det.chunk_size] if cuda else boxes_all[:8])
        shared.score_regions(image, boxes_all if cuda else boxes_all[:8])
    image_norm = det.normalize(image)
    with torch.no_grad():
        trunk_s = _median_time(lambda: shared.image_features(image_norm), dev, repeats, clock)
        levels = shared.image_features(image_norm)
    rows = []
    for n in proposals:
        boxes = boxes_all[:n]
        m = n if not rcnn_sample else min(n, rcnn_sample)
        t_rcnn = _median_time(lambda: det.score_regions(image, boxes[:m]), dev, repeats, clock) * n / m
        t_shared = _median_time(lambda: shared.score_regions(image, boxes), dev, repeats, clock)
        with torch.no_grad():
            pool_s = _median_time(lambda: shared.pool(levels, boxes), dev, repeats, clock)
            pool_tv_s = None
            if cuda or bags_available(levels[0][0], shared.sampling_ratio):
                shared.fast_pool = False
                pool_tv_s = _median_time(lambda: shared.pool(levels, boxes), dev, repeats, clock)
                shared.fast_pool = True
            pooled = shared.pool(levels, boxes)
            step = shared.chunk_size
            head_s = _median_time(lambda: [shared._head(pooled[i:i + step]) for i in range(0, n, step)],
                                  dev, repeats, clock)
        rows.append({"backbone": backbone, "proposals": n, "rcnn_s": t_rcnn, "rcnn_measured_on": m,
                     "shared_s": t_shared, "trunk_s": trunk_s, "pool_s": pool_s, "pool_tv_s": pool_tv_s,
                     "head_s": head_s,
                     "speedup": t_rcnn / t_shared})
    return rows


@click.command()
@click.option("--backbones", default="googlenet,googlenet_tv", show_default=True, help="Comma list of registry names.")
@click.option("--proposals", default="2000,500", show_default=True, help="Comma list of proposals per image.")
@click.option("--width", default=640, show_default=True, type=click.IntRange(32, 8192))
@click.option("--height", default=480, show_default=True, type=click.IntRange(32, 8192))
@click.option("--scales", default="600", show_default=True, help="Shared mode: comma list of shorter sides.")
@click.option("--max-size", default=1000, show_default=True, type=click.IntRange(1, 8192),
              help="Shared mode: cap on the longer side.")
@click.option("--pooled-size", default=None, type=click.IntRange(min=1),
              help="Shared mode: pooled region side (default: the stage's "
              "size at the backbone's input size, 14 for GoogLeNet).")
@click.option("--stage", default=None, help="Shared mode: feature_info stage regions are pooled from (default: "
              "the deepest stride-16 one, inception4e for GoogLeNet).")
@click.option("--input-size", default=None, type=click.IntRange(min=16),
              help="R-CNN mode's crop side (default: the backbone's, 224 for GoogLeNet; 48 for the shipped detector).")
@click.option("--sampling-ratio", default=1, show_default=True, type=click.IntRange(min=0),
              help="Shared mode: roi_align samples per bin and axis (0: adaptive).")
@click.option("--rcnn-sample", default=128, show_default=True, type=click.IntRange(min=1),
              help="Time R-CNN mode on this many proposals and scale linearly to N.")
@click.option("--rcnn-full", is_flag=True, help="Time R-CNN mode on all N proposals (minutes per image on a CPU).")
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1),
              help="Timed calls per measurement (median).")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch CPU threads (default: torch's).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="The inference runtime's precision for both modes (auto: fp16 channels-last on CUDA, fp32 on a "
              "CPU).")
@click.option("--eager", is_flag=True, help="Time the plain fp32 networks, without the inference runtime.")
@click.option("--chunk", default=None, type=click.IntRange(min=1),
              help="Regions per network call in both modes (default: the detector's, 256).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile both networks (shared: the per-region head).")
@click.option("--cuda-graphs", is_flag=True, help="CUDA: replay both networks from CUDA graphs (shared: the trunk and "
              "the per-region head).")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="cpu: process CPU time (with --threads 1, immune to other jobs on a shared machine).")
def main(backbones, proposals, width, height, scales, max_size, pooled_size, stage, input_size, sampling_ratio,
         rcnn_sample, rcnn_full, repeats, threads, device, precision, eager, chunk, compile_, cuda_graphs, clock):
    """Per-image network-stage time, R-CNN vs shared-feature detection."""
    from gdet.cli import int_list

    if threads:
        torch.set_num_threads(threads)
    ns, sc = int_list(proposals, "--proposals"), tuple(int_list(scales, "--scales"))
    click.echo(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, image "
               f"{width}x{height}, crops {input_size or 'default'} px, shared scales {list(sc)} max {max_size}, "
               f"stage {stage or 'stride 16'}, pooled {pooled_size or 'default'}, sampling ratio {sampling_ratio}, "
               f"{clock} clock, " + ("eager fp32" if eager else f"inference runtime, precision {precision}")
               + (", compiled" if compile_ else "") + (", CUDA graphs" if cuda_graphs else ""))
    click.echo(f"{'backbone':<14} {'N':>5} {'rcnn ms/img':>12} {'(timed on)':>10} {'shared ms/img':>14} "
               f"{'speed-up':>9} {'trunk ms':>9} {'RoIAlign ms':>12} {'head ms':>9} {'tv RoIAlign ms':>15}")
    for name in [b.strip() for b in backbones.split(",") if b.strip()]:
        rows = measure(name, ns, width=width, height=height, scales=sc, max_size=max_size, pooled_size=pooled_size,
                       stage=stage, sampling_ratio=sampling_ratio, input_size=input_size,
                       rcnn_sample=None if rcnn_full else rcnn_sample,
                       repeats=repeats, device=device, clock=clock, precision=None if eager else precision,
                       chunk_size=chunk, compile=compile_, cuda_graphs=cuda_graphs)
        for r in rows:
            tv = "-" if r["pool_tv_s"] is None else f"{1e3 * r['pool_tv_s']:.2f} ({r['pool_tv_s'] / r['pool_s']:.1f}x)"
            click.echo(f"{r['backbone']:<14} {r['proposals']:>5} {1e3 * r['rcnn_s']:>12.1f} "
                       f"{r['rcnn_measured_on']:>10} {1e3 * r['shared_s']:>14.2f} {r['speedup']:>8.1f}x "
                       f"{1e3 * r['trunk_s']:>9.2f} {1e3 * r['pool_s']:>12.2f} {1e3 * r['head_s']:>9.2f} {tv:>15}")


if __name__ == "__main__":
    from gdet.cli import run_guarded

    run_guarded(main.main, standalone_mode=True)
