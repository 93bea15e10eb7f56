"""``tools/bench.py classify``: inference speed of gdet's runtime against torchvision's ``googlenet`` as a user runs
it (eager, and with ``torch.compile``), same inputs, same run, same threads.

gdet's ``googlenet_tv`` is the same network as ``torchvision.models.googlenet`` (batch norm, 3x3 "5x5" branches);
``gdet.runtime.optimize`` turns it into its fastest exact form (batch norm folded, parallel 1x1 convolutions fused,
channels-last, fp16 on CUDA). The paper's ``googlenet`` (LRN, true 5x5 branches) is timed beside them. Models are
timed interleaved (one repeat of each, then the next), so a change of load on a shared machine hits all alike;
the median over repeats is reported with the spread.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import click
import torch

TV = "torchvision googlenet"
TV_COMPILE = "torchvision googlenet + compile"
GDET = "gdet googlenet_tv runtime"
GDET_COMPILE = "gdet googlenet_tv runtime + compile"
PAPER_EAGER = "gdet googlenet (paper) eager"
PAPER = "gdet googlenet (paper) runtime"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _torchvision_googlenet(classes: int):
    import torchvision

    return torchvision.models.googlenet(weights=None, init_weights=False, aux_logits=False, transform_input=False,
                                        num_classes=classes).eval()


def _user_call(model, device: torch.device, precision: str, channels_last: bool) -> Callable:
    """How a user runs a plain PyTorch model: inference mode, autocast for reduced precision."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def call(x):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(x)

    return call


def _runtime_call(model) -> Callable:
    def call(x):
        with torch.inference_mode():
            return model(x)

    return call


def build_candidates(device: torch.device, precision: str, classes: int, compile_what: str) -> dict[str, Callable]:
    """The timed callables of one precision: ``{row name: fn(x) -> logits}``."""
    from gdet.backbones import build_backbone
    from gdet.runtime import optimize

    gpu = device.type == "cuda"
    cl = gpu and precision != "fp32"  # a GPU user with AMP also switches to channels-last
    torch.manual_seed(0)
    tv = _torchvision_googlenet(classes).to(device)
    gd = build_backbone("googlenet_tv", num_classes=classes, aux_logits=False, transform_input=False).eval()
    paper = build_backbone("googlenet", num_classes=classes, aux_logits=False).eval()
    if cl:
        tv = tv.to(memory_format=torch.channels_last)
    out = {TV: _user_call(tv, device, precision, cl)}
    if compile_what in ("torchvision", "all"):
        out[TV_COMPILE] = _user_call(torch.compile(tv), device, precision, cl)
    out[GDET] = _runtime_call(optimize(gd, device=device, precision=precision))
    if compile_what == "all":
        out[GDET_COMPILE] = _runtime_call(optimize(gd, device=device, precision=precision, compile=True))
    out[PAPER_EAGER] = _user_call(paper.to(device), device, precision, cl)
    out[PAPER] = _runtime_call(optimize(paper, device=device, precision=precision))
    return out


def _time(fn: Callable, x, iters: int, device: torch.device) -> tuple[float, float]:
    """Seconds per call: wall clock, and this process's CPU time (all threads; steadier on a shared machine)."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn(x)
    _sync(device)
    return (time.perf_counter() - t) / iters, (time.process_time() - c) / iters


def measure(candidates: dict[str, Callable], x: torch.Tensor, iters: int, repeats: int,
            device: torch.device) -> dict[str, dict]:
    """Warm-up time (first calls: compilation, autotuning) and per-batch times of each candidate, interleaved.

    Returns:
        ``{name: {"warmup_s", "times_s": [repeats wall-clock s], "cpu_s": [repeats CPU s]}}``.
    """
    res = {}
    for name, fn in candidates.items():
        _sync(device)
        t = time.perf_counter()
        fn(x)
        fn(x)  # a second call: recompilation on a new grad mode or cuDNN autotuning would show here
        _sync(device)
        res[name] = {"warmup_s": time.perf_counter() - t, "times_s": [], "cpu_s": []}
    for _ in range(repeats):
        for name, fn in candidates.items():
            wall, cpu = _time(fn, x, iters, device)
            res[name]["times_s"].append(wall)
            res[name]["cpu_s"].append(cpu)
    return res


def table_rows(res: dict[str, dict], precision: str, batch: int) -> list[dict]:
    """One row per candidate: median/min/max wall ms per batch, images/s, speed-up over torchvision eager (wall
    clock), median CPU ms per batch and the speed-up in CPU time."""
    base = statistics.median(res[TV]["times_s"])
    base_cpu = statistics.median(res[TV]["cpu_s"])
    rows = []
    for name, r in res.items():
        med, cpu = statistics.median(r["times_s"]), statistics.median(r["cpu_s"])
        rows.append({"precision": precision, "batch": batch, "model": name, "ms": 1000 * med,
                     "ms_min": 1000 * min(r["times_s"]), "ms_max": 1000 * max(r["times_s"]),
                     "img_s": batch / med, "vs_tv_eager": base / med, "cpu_ms": 1000 * cpu,
                     "cpu_vs_tv_eager": base_cpu / cpu, "warmup_s": r["warmup_s"]})
    return rows


def graph_rows(device: torch.device, precision: str, classes: int, size: int, iters: int, repeats: int) -> list[dict]:
    """Batch-1 latency on CUDA: torchvision eager against gdet's runtime replaying a CUDA graph."""
    from gdet.backbones import build_backbone
    from gdet.runtime import optimize

    torch.manual_seed(0)
    cl = precision != "fp32"
    tv = _torchvision_googlenet(classes).to(device)
    if cl:
        tv = tv.to(memory_format=torch.channels_last)
    gd = build_backbone("googlenet_tv", num_classes=classes, aux_logits=False, transform_input=False).eval()
    cands = {TV: _user_call(tv, device, precision, cl),
             GDET + " + CUDA graph": _runtime_call(optimize(gd, device=device, precision=precision,
                                                            cuda_graphs=True, chunk_size=1))}
    x1 = torch.randn(1, 3, size, size, device=device)
    return table_rows(measure(cands, x1, iters, repeats, device), precision, 1)


def run_benchmark(device: str = "auto", batch: int | None = None, size: int | None = None, iters: int | None = None,
                  repeats: int = 5, classes: int = 1000, precisions: str | None = None,
                  compile_what: str = "torchvision") -> tuple[str, list[dict]]:
    """Returns (device name, table rows) — see :func:`table_rows` for the row keys."""
    from gdet.engine import resolve_device

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    batch = batch or (128 if gpu else 8)
    size = size or (224 if gpu else 160)
    iters = iters or (20 if gpu else 2)
    precs = (precisions or ("fp32,bf16,fp16" if gpu else "fp32")).split(",")
    for prec in precs:  # all checked before the first is timed
        if prec not in ("fp32", "bf16", "fp16"):
            from gdet.errors import GdetError

            raise GdetError(f"--precisions: unknown precision {prec!r} (use fp32, bf16, fp16)")
    if gpu:
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=dev)
    rows = []
    for prec in precs:
        rows += table_rows(measure(build_candidates(dev, prec, classes, compile_what), x, iters, repeats, dev),
                           prec, batch)
        if gpu and prec != "fp32":
            rows += graph_rows(dev, prec, classes, size, iters, repeats)
        if gpu:
            torch.cuda.empty_cache()
    return name, rows


def format_table(rows: list[dict]) -> list[str]:
    lines = [f"{'precision':<9} {'batch':>5} {'model':<44} {'ms/batch':>9} {'min-max ms':>17} {'img/s':>9} "
             f"{'vs tv eager':>11} {'warm-up s':>9} {'CPU ms':>9} {'(CPU time)':>10}"]
    for r in rows:
        lines.append(f"{r['precision']:<9} {r['batch']:>5} {r['model']:<44} {r['ms']:>9.1f} "
                     f"{r['ms_min']:>8.1f}-{r['ms_max']:<8.1f} {r['img_s']:>9.1f} {r['vs_tv_eager']:>10.2f}x "
                     f"{r['warmup_s']:>9.1f} {r['cpu_ms']:>9.1f} {r['cpu_vs_tv_eager']:>9.2f}x")
    return lines


@click.command()
@click.option("--device", default="auto", show_default=True)
@click.option("--batch", default=None, type=click.IntRange(min=1), help="Batch size (default: 128 on GPU, 8 on CPU).")
@click.option("--size", default=None, type=click.IntRange(16, 4096),
              help="Input side (default: 224 on GPU, 160 on CPU).")
@click.option("--iters", default=None, type=click.IntRange(min=1),
              help="Timed calls per repeat (default: 20 GPU, 2 CPU).")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1),
              help="Interleaved repeats; the median is reported.")
@click.option("--classes", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--precisions", default=None, help="Comma list (default: fp32 on CPU; fp32,bf16,fp16 on GPU).")
@click.option("--compile", "compile_what", type=click.Choice(["none", "torchvision", "all"]), default="torchvision",
              show_default=True, help="Which networks are also timed under torch.compile (all: gdet's runtime too).")
def main(device, batch, size, iters, repeats, classes, precisions, compile_what):
    """Inference ms/batch of gdet's runtime vs torchvision's googlenet (eager and compiled); speed-up vs eager."""
    name, rows = run_benchmark(device, batch, size, iters, repeats, classes, precisions, compile_what)
    size_s = rows[0]
    click.echo(f"device: {name}; torch {torch.__version__}; {size_s['batch']} images per batch at "
               f"{size or (224 if 'CPU' not in name else 160)} px; {repeats} interleaved repeats (median, min-max)")
    for line in format_table(rows):
        click.echo(line)
    for prec in dict.fromkeys(r["precision"] for r in rows):
        by = {r["model"]: r for r in rows if r["precision"] == prec and r["batch"] == size_s["batch"]}
        msg = f"{prec}: gdet runtime {by[GDET]['vs_tv_eager']:.2f}x torchvision eager"
        if TV_COMPILE in by:
            msg += f", {by[TV_COMPILE]['ms'] / by[GDET]['ms']:.2f}x torchvision + compile"
        if math.isfinite(by[PAPER]["ms"]):
            msg += f"; paper googlenet runtime {by[PAPER_EAGER]['ms'] / by[PAPER]['ms']:.2f}x its eager run"
        click.echo(msg)
