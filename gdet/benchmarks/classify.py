"""Classification speed: gdet's GoogLeNet against torchvision's ``googlenet`` on the same inputs, same run.

Inference and training images/s at fp32 and (GPU) bf16/fp16 channels-last, the ratio gdet/torchvision, and on
CUDA the batch-1 latency eager vs. a captured CUDA graph. gdet's ``googlenet_tv`` is the same network as
torchvision's (batch norm, 3x3 "5x5" branches); the paper's ``googlenet`` (LRN, true 5x5) is timed beside it.
"""
from __future__ import annotations

import statistics
import time

import click
import torch
from torch import nn

from gdet.backbones import BackboneOutput, build_backbone


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _models(num_classes: int):
    import torchvision

    tv = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True,
                                      num_classes=num_classes)
    return {
        "gdet googlenet_tv": build_backbone("googlenet_tv", num_classes=num_classes, aux_logits=True),
        "torchvision googlenet": tv,
        "gdet googlenet (paper)": build_backbone("googlenet", num_classes=num_classes, aux_logits=True),
    }


def _logits(out):
    if isinstance(out, BackboneOutput):
        return out.logits, out.aux_logits
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # torchvision GoogLeNetOutputs
        return out[0], tuple(a for a in out[1:] if a is not None)
    return out, ()


def _train_step(model, opt, x, y, device, precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        main, aux = _logits(model(x))
        loss = nn.functional.cross_entropy(main.float(), y)
        for a in aux:
            loss = loss + 0.3 * nn.functional.cross_entropy(a.float(), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _infer(model, x, device, precision, cache: bool = True):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    # Graph capture needs autocast's weight-cast cache off (the cast must be part of the recorded work).
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache):
        return model(x)


def _time(fn, iters: int, device) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / iters


def _graph_latency(model, size, device, precision, iters):
    """Batch-1 latency (ms) of a captured CUDA graph replay."""
    static = torch.randn(1, 3, size, size, device=device)
    if precision != "fp32":
        static = static.contiguous(memory_format=torch.channels_last)
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):
            _infer(model, static, device, precision, cache=False)
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        _infer(model, static, device, precision, cache=False)
    for _ in range(3):
        g.replay()
    return 1000 * _time(g.replay, iters, device)


@click.command()
@click.option("--device", default="auto", show_default=True)
@click.option("--batch", default=None, type=int, help="Batch size (default: 128 on GPU, 8 on CPU).")
@click.option("--size", default=None, type=int, help="Input side (default: 224 on GPU, 160 on CPU).")
@click.option("--iters", default=None, type=int, help="Timed iterations per repeat (default: 20 GPU, 2 CPU).")
@click.option("--repeats", default=3, show_default=True, help="Interleaved repeats; the median is reported.")
@click.option("--classes", default=1000, show_default=True)
@click.option("--precisions", default=None, help="Comma list (default: fp32 on CPU; fp32,bf16,fp16 on GPU).")
def main(device, batch, size, iters, repeats, classes, precisions):
    """Images/s of gdet's GoogLeNet vs torchvision's googlenet (inference and training), ratio gdet/torchvision."""
    from gdet.engine import resolve_device

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    batch = batch or (128 if gpu else 8)
    size = size or (224 if gpu else 160)
    iters = iters or (20 if gpu else 2)
    precs = (precisions or ("fp32,bf16,fp16" if gpu else "fp32")).split(",")
    if gpu:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    click.echo(f"device: {name}; batch {batch}, {size}x{size}, {iters} iters x {repeats} repeats (median)")
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)
    rows = []
    for prec in precs:
        cl = prec != "fp32" and gpu  # channels-last with reduced precision on GPU
        models = _models(classes)
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x
        for m in models.values():
            m.to(dev)
            if cl:
                m.to(memory_format=torch.channels_last)
        opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
        res = {k: {"infer": [], "train": []} for k in models}
        for k, m in models.items():  # warm-up (cudnn autotune, allocator)
            m.eval()
            _infer(m, xi, dev, prec)
            m.train()
            _train_step(m, opts[k], xi, y, dev, prec)
        for _ in range(repeats):  # interleaved, so load changes hit every model alike
            for k, m in models.items():
                m.eval()
                res[k]["infer"].append(batch / _time(lambda: _infer(m, xi, dev, prec), iters, dev))
                m.train()
                res[k]["train"].append(batch / _time(lambda: _train_step(m, opts[k], xi, y, dev, prec), iters, dev))
        lat = {}
        if gpu:
            for k, m in models.items():
                m.eval()
                x1 = xi[:1]
                for _ in range(3):  # a new shape: keep cudnn's autotuning out of the timing
                    _infer(m, x1, dev, prec)
                eager = 1000 * _time(lambda: _infer(m, x1, dev, prec), iters, dev)
                try:
                    graph = _graph_latency(m, size, dev, prec, iters)
                except RuntimeError as e:  # capture can fail on exotic set-ups; report eager only
                    click.echo(f"  CUDA graph capture failed for {k}: {str(e).splitlines()[0]}")
                    graph = float("nan")
                lat[k] = (eager, graph)
        for k in models:
            inf, tr = statistics.median(res[k]["infer"]), statistics.median(res[k]["train"])
            rows.append((prec + (" CL" if cl else ""), k, inf, tr, *lat.get(k, (float("nan"), float("nan")))))
        del models, opts
        if gpu:
            torch.cuda.empty_cache()
    click.echo(f"{'precision':<10} {'model':<24} {'infer img/s':>12} {'train img/s':>12} {'b1 eager ms':>12} "
               f"{'b1 graph ms':>12}")
    for r in rows:
        click.echo(f"{r[0]:<10} {r[1]:<24} {r[2]:>12.1f} {r[3]:>12.1f} {r[4]:>12.3f} {r[5]:>12.3f}")
    click.echo("ratio gdet googlenet_tv / torchvision googlenet (same network, same inputs):")
    for prec in dict.fromkeys(r[0] for r in rows):
        g = next(r for r in rows if r[0] == prec and r[1] == "gdet googlenet_tv")
        t = next(r for r in rows if r[0] == prec and r[1] == "torchvision googlenet")
        click.echo(f"  {prec:<10} inference {g[2] / t[2]:.2f}x  training {g[3] / t[3]:.2f}x"
                   + (f"  batch-1 graph vs tv eager {t[4] / g[5]:.2f}x faster" if gpu and g[5] == g[5] else ""))
