"""Training-input speed: today's per-image CPU workers (``TrainTransform``) against the batched path
(:mod:`gdet.classification.gpu_input`: workers read bytes, decoding and augmentation on the training device), same run.

For each path: loader-only images/s (batches ready on the device), step-only images/s (a training step of the
backbone on a batch already on the device, no input work) and end-to-end images/s (input + step, as training
runs), with the ratio batched / per-image. Without ``--data`` a small synthetic JPEG folder is generated in a
temporary directory.
"""
from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch
from torch import nn

PATHS = ("cpu", "gpu")
LABELS = {"cpu": "per-image workers", "gpu": "batched on device"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _image_folder(data: str | None, images: int, image_size: int, tmp: str) -> Path:
    """``data`` (a dataset root with ``train/`` or an image folder itself), or a generated JPEG folder."""
    if data:
        root = Path(data)
        return root / "train" if (root / "train").is_dir() else root
    from gdet.data.synth import SynthConfig, generate

    # About three object crops per scene: generate enough scenes for ``images`` crops.
    cfg = SynthConfig(images=max(images // 3, 4), task="classify", val_fraction=0.0, crop_size=image_size,
                      width=max(2 * image_size, 160), height=max(3 * image_size // 2, 120))
    generate(cfg, tmp, workers=0, show_progress=False)
    return Path(tmp) / "train"


def _cycle(loader):
    """Batches forever, a new epoch (reshuffled, workers restarted, as in training) when one ends."""
    from gdet.engine import set_epoch

    for epoch in itertools.count():
        set_epoch(loader, epoch)
        yield from loader


def _make_step(model, device, precision, channels_last):
    from gdet.classification.model import Normalizer
    from gdet.engine import move_to_device

    from gdet.backbones import BackboneOutput

    prepare = Normalizer(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step(images, targets):
        images = prepare(move_to_device(images, device, channels_last))
        targets = move_to_device(targets, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(images)
            if isinstance(out, BackboneOutput):
                loss = nn.functional.cross_entropy(out.logits.float(), targets)
                for a in out.aux_logits:
                    loss = loss + 0.3 * nn.functional.cross_entropy(a.float(), targets)
            else:
                loss = nn.functional.cross_entropy(out.float(), targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _rate(fn, n_batches: int, batch: int, device) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(n_batches):
        fn()
    _sync(device)
    return n_batches * batch / (time.perf_counter() - t)


@click.command()
@click.option("--data", default=None, type=click.Path(exists=True, file_okay=False),
              help="Image folder root/<class>/*.jpg, or a dataset root with train/ (default: generate one).")
@click.option("--images", default=200, show_default=True, type=click.IntRange(min=1),
              help="Generated images (without --data).")
@click.option("--image-size", default=128, show_default=True, type=click.IntRange(32, 8192),
              help="Side of the generated images.")
@click.option("--device", default="auto", show_default=True)
@click.option("--backbone", default="googlenet_tv", show_default=True)
@click.option("--size", default=None, type=click.IntRange(16, 4096),
              help="Network input side (default: 224 on GPU, 112 on CPU).")
@click.option("--batch", default=None, type=click.IntRange(min=1), help="Batch size (default: 256 on GPU, 32 on CPU).")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Loader worker processes (default: all CPUs on GPU, 1 on CPU).")
@click.option("--precision", default=None, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Default: bf16 on GPU, fp32 on CPU.")
@click.option("--channels-last/--no-channels-last", default=None, help="Default: on for GPU.")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Timed batches per measurement (default: 30 GPU, 3 CPU).")
@click.option("--warmup", default=None, type=click.IntRange(min=0),
              help="Untimed batches first (default: 5 GPU, 1 CPU).")
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1),
              help="Interleaved repeats; the median is reported.")
@click.option("--paths", "which", default="cpu,gpu", show_default=True,
              help="Input paths to time: cpu (per-image workers), gpu (batched on the device).")
@click.option("--prefetch", default=2, show_default=True, type=click.IntRange(min=1),
              help="Batches the batched path prepares ahead.")
@click.option("--resize", "resize_method", default="auto", show_default=True,
              type=click.Choice(["auto", "loop", "matrix"]),
              help="Batched path's crop+resize: per-image loop, batched resampling matrices, auto (matrix on GPU).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
def main(data, images, image_size, device, backbone, size, batch, workers, precision, channels_last, steps, warmup,
         repeats, which, prefetch, resize_method, seed):
    """Images/s of the per-image CPU input path vs the batched device path: loader only, step only, end to end."""
    import os

    from gdet.backbones import build_backbone
    from gdet.classification.transforms import TrainTransform
    from gdet.data.folder import read_image_folder
    from gdet.classification.gpu_input import BatchTrainAugment, build_device_loader
    from gdet.data.loading import ClassificationDataset
    from gdet.engine import build_loader, move_to_device, resolve_device
    from gdet.errors import ConfigError

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    size = size or (224 if gpu else 112)
    batch = batch or (256 if gpu else 32)
    workers = (os.cpu_count() or 1) if workers is None and gpu else (1 if workers is None else workers)
    precision = precision or ("bf16" if gpu else "fp32")
    channels_last = gpu if channels_last is None else channels_last
    steps = steps or (30 if gpu else 3)
    warmup = (5 if gpu else 1) if warmup is None else warmup
    paths_run = [p.strip() for p in which.split(",") if p.strip()]
    bad = sorted(set(paths_run) - set(PATHS))
    if bad or not paths_run:
        raise click.BadParameter(f"unknown {bad or which!r} (use cpu, gpu)", param_hint="--paths")
    if gpu:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seed)

    with tempfile.TemporaryDirectory(prefix="gdet-loader-") as tmp:
        folder = _image_folder(data, images, image_size, tmp)
        files, labels, names = read_image_folder(folder)
        if not data and len(files) > images:  # scenes give a variable number of crops: keep ``images`` of them
            keep = sorted(torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:images].tolist())
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        if len(files) < batch:
            raise ConfigError(f"{folder}: {len(files)} images, fewer than one batch ({batch})")
        aug_kw = dict(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
        loaders = {
            "cpu": build_loader(ClassificationDataset(files, labels, TrainTransform(size, **aug_kw)),
                                batch_size=batch, train=True, num_workers=workers, device=dev, seed=seed),
            "gpu": build_device_loader(files, labels, BatchTrainAugment(size, resize_method=resize_method, **aug_kw),
                                       batch_size=batch, device=dev, num_workers=workers, seed=seed,
                                       channels_last=channels_last, prefetch=prefetch),
        }
        name = torch.cuda.get_device_name(dev) if gpu else f"CPU ({torch.get_num_threads()} threads)"
        click.echo(f"device: {name}; {len(files)} images from {folder if data else 'a generated folder'}; "
                   f"{backbone} {precision}{' channels-last' if channels_last else ''}, batch {batch}, "
                   f"{size}x{size}, {workers} workers, resize {resize_method}, "
                   f"{steps} timed batches x {repeats} repeats (median)")

        model = build_backbone(backbone, num_classes=max(len(names), 2)).to(dev).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        step = _make_step(model, dev, precision, channels_last)
        streams = {p: _cycle(loaders[p]) for p in paths_run}
        # A fixed on-device batch for the step-only figure (the same for both paths: no input work in it).
        x0, y0 = next(streams[paths_run[0]])
        x0, y0 = move_to_device(x0, dev, channels_last), move_to_device(y0, dev)
        for _ in range(max(warmup, 1)):
            step(x0, y0)
        res = {p: {"loader": [], "e2e": []} for p in paths_run}
        steponly = []

        def load(p):
            x, y = next(streams[p])
            move_to_device(x, dev, channels_last)
            move_to_device(y, dev)

        def train(p):
            step(*next(streams[p]))

        for _ in range(repeats):  # interleaved, so load changes on a shared machine hit every path alike
            for p in paths_run:
                for _ in range(warmup):
                    load(p)
                res[p]["loader"].append(_rate(lambda: load(p), steps, batch, dev))
                for _ in range(warmup):
                    train(p)
                res[p]["e2e"].append(_rate(lambda: train(p), steps, batch, dev))
            steponly.append(_rate(lambda: step(x0, y0), steps, batch, dev))
        for s in streams.values():
            s.close()
        stats = loaders["gpu"].stats if "gpu" in paths_run else {}

    so = statistics.median(steponly)
    rows = {p: (statistics.median(res[p]["loader"]), so, statistics.median(res[p]["e2e"])) for p in paths_run}
    click.echo(f"{'input path':<30} {'loader img/s':>13} {'step img/s':>11} {'end-to-end img/s':>17} "
               f"{'e2e / step':>11}")
    for p, (ld, st, e2e) in rows.items():
        click.echo(f"{p + ' (' + LABELS[p] + ')':<30} {ld:>13.1f} {st:>11.1f} {e2e:>17.1f} {e2e / st:>11.2f}")
    if gpu and stats:
        click.echo(f"batched path decoded {stats.get('gpu', 0)} images with nvJPEG, {stats['cpu']} on the CPU")
    if len(rows) == 2:
        c, g = rows["cpu"], rows["gpu"]
        click.echo(f"ratio batched / per-image: loader {g[0] / c[0]:.2f}x  end-to-end {g[2] / c[2]:.2f}x")
