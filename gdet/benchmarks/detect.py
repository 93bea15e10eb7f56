"""``tools/bench.py detect``: R-CNN detection time per image, split into proposals, crops, network and NMS.

Measured on synthetic 500 x 375 images with 2,000 proposals each (selective search's own boxes, topped up with
jittered copies when it finds fewer). The network is a random-initialised GoogLeNet detector (21 classes, as
VOC) at ``--input-size`` (224 as the paper on GPU; the shipped detector's 48 px on CPU by default, since 2,000
crops at 224 take minutes on a CPU). Peers, measured in the same run: torchvision's ``googlenet`` on the same crops
(network stage), and the serial pipeline (proposals then detection) for the overlapped one, where DataLoader
workers compute the next images' proposals while the network runs.
"""
from __future__ import annotations

import os
import time

import click
import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int):
    """Median seconds of ``repeats`` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def _images(n: int, width: int = 500, height: int = 375) -> list[np.ndarray]:
    from gdet.data.synth import SynthConfig, generate_image

    cfg = SynthConfig(images=n, seed=123, width=width, height=height)
    return [generate_image(cfg, i)[0] for i in range(n)]


def _top_up(boxes: torch.Tensor, n: int, w: int, h: int, seed: int = 0) -> torch.Tensor:
    """Exactly ``n`` proposals: the first ``n`` boxes, plus jittered copies if there are fewer."""
    if boxes.shape[0] >= n:
        return boxes[:n]
    g = torch.Generator().manual_seed(seed)
    base = boxes if boxes.shape[0] else torch.tensor([[0.0, 0.0, w / 2, h / 2]])
    extra = base[torch.randint(base.shape[0], (n - boxes.shape[0],), generator=g)]
    extra = extra + torch.randn(extra.shape, generator=g) * 4
    extra[:, 0::2] = extra[:, 0::2].clamp(0, w)
    extra[:, 1::2] = extra[:, 1::2].clamp(0, h)
    return torch.cat([boxes, extra])


def _random_boxes(n: int, w: int, h: int, seed: int = 0) -> torch.Tensor:
    """``n`` random boxes inside a ``w x h`` image, sides 5-100% of the image (timing stand-ins)."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(n, 2, generator=g) * 0.95 + 0.05
    wh = wh * torch.tensor([float(w), float(h)])
    xy = torch.rand(n, 2, generator=g) * (torch.tensor([float(w), float(h)]) - wh)
    return torch.cat([xy, xy + wh], 1)


class _RandomProposer:
    """Stands in for selective search (``--source random``) where OpenCV's ximgproc is missing, e.g. on a GPU
    machine without opencv-contrib: the crop, network and NMS stages do not depend on where boxes come from."""

    def __init__(self, n: int):
        self.n = n

    def propose(self, image: np.ndarray):
        boxes = _random_boxes(self.n, image.shape[1], image.shape[0])
        return boxes, torch.zeros(self.n)


def _proposer(source: str, n_props: int, options: dict):
    if source == "random":
        return _RandomProposer(n_props)
    from gdet.proposals import build_proposer

    return build_proposer("ss", **options)


class _ProposalImages(torch.utils.data.Dataset):
    """Images and their proposals, computed inside DataLoader workers (the overlapped pipeline)."""

    def __init__(self, images, n_props, options, source="ss"):
        self.images, self.n_props, self.options, self.source = images, n_props, options, source

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        boxes, _ = _proposer(self.source, self.n_props, self.options).propose(img)
        return torch.from_numpy(img), _top_up(boxes, self.n_props, img.shape[1], img.shape[0])


@click.command()
@click.option("--device", default="auto", show_default=True)
@click.option("--proposals", "n_props", default=2000, show_default=True, help="Proposals per image.")
@click.option("--input-size", default=None, type=int, help="Crop side (default: 224 on GPU, 48 on CPU).")
@click.option("--precision", default=None, help="fp32 | bf16 | fp16 (default: fp16 channels-last on GPU, fp32 on CPU).")
@click.option("--chunk", default=None, type=int, help="Crops per network call (default 500 on GPU, 250 on CPU).")
@click.option("--images", "n_images", default=4, show_default=True, help="Images for the pipeline throughput.")
@click.option("--workers", default=None, type=int, help="Proposal workers for the overlapped run (default: CPUs).")
@click.option("--repeats", default=3, show_default=True)
@click.option("--source", type=click.Choice(["ss", "random"]), default="ss", show_default=True,
              help="Proposals: selective search, or random boxes (no OpenCV ximgproc needed; proposal time ~0).")
def main(device, n_props, input_size, precision, chunk, n_images, workers, repeats, source):
    """Per-image detection time by stage, and images/s serial vs overlapped."""
    import torchvision

    from gdet.backbones import build_backbone
    from gdet.detection.model import Detector, detect_image
    from gdet.engine import autocast, resolve_device
    from gdet.nms import postprocess

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    size = input_size or (224 if gpu else 48)
    precision = precision or ("fp16" if gpu else "fp32")
    channels_last = gpu
    chunk = chunk or (500 if gpu else 250)
    workers = (os.cpu_count() or 1) if workers is None else workers
    opts = {"max_side": 500}
    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(20)]
    det = Detector(build_backbone("googlenet", num_classes=21, aux_logits=False), classes, input_size=size,
                   context_pad=max(1, round(16 * size / 224)), chunk_size=chunk).to(dev).eval()
    if channels_last:
        det = det.to(memory_format=torch.channels_last)
    imgs = _images(max(n_images, 1))
    img = imgs[0]
    h, w = img.shape[:2]
    proposer = _proposer(source, n_props, opts)

    t_props, (boxes, _) = _timed(lambda: proposer.propose(img), torch.device("cpu"), max(1, repeats - 1))
    n_ss = int(boxes.shape[0])
    boxes = _top_up(boxes, n_props, w, h).to(dev)
    image01 = torch.from_numpy(img).to(dev).permute(2, 0, 1).float() / 255

    def crops():
        return [c for _, c in det.crop(det.normalize(image01), boxes)]

    t_crops, chunks = _timed(crops, dev, repeats)

    @torch.no_grad()
    def network(model):
        outs = []
        for c in chunks:
            if channels_last:
                c = c.contiguous(memory_format=torch.channels_last)
            with autocast(dev, precision):
                outs.append(torch.softmax(model(c).float() if not hasattr(model, "bbox_head") else
                                          model(c).logits.float(), 1))
        return torch.cat(outs)

    t_net, probs = _timed(lambda: network(det), dev, repeats)
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False, num_classes=21).to(dev).eval()
    if channels_last:
        tv = tv.to(memory_format=torch.channels_last)
    t_tv, _ = _timed(lambda: network(tv), dev, repeats)
    t_nms, _ = _timed(lambda: postprocess(boxes, probs, 0.05, 0.3, 100), dev, repeats)

    # Whole pipeline over several images: serial vs proposals in DataLoader workers.
    def serial():
        for im in imgs:
            b, _ = proposer.propose(im)
            detect_image(det, im, _top_up(b, n_props, w, h), precision=precision, channels_last=channels_last,
                         device=dev)

    t0 = time.perf_counter()
    serial()
    t_serial = (time.perf_counter() - t0) / len(imgs)
    loader = torch.utils.data.DataLoader(_ProposalImages(imgs, n_props, opts, source), batch_size=None,
                                         num_workers=max(workers, 1), prefetch_factor=2)
    t0 = time.perf_counter()
    for im, b in loader:
        detect_image(det, im.numpy(), b, precision=precision, channels_last=channels_last, device=dev)
    t_overlap = (time.perf_counter() - t0) / len(imgs)

    name = torch.cuda.get_device_name(dev) if gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    origin = (f"selective search found {n_ss}; {'first kept' if n_ss >= n_props else 'topped up with jittered copies'}"
              if source == "ss" else "random boxes")
    click.echo(f"detect benchmark on {name}: {w}x{h} images, {n_props} proposals ({origin}), GoogLeNet at {size} px, {precision}{' channels-last' if channels_last else ''}, "
               f"chunks of {chunk}")
    click.echo(f"{'stage':<34} {'ms/image':>10}")
    rows = [("proposals (selective search, CPU)" if source == "ss" else "proposals (random stand-in)", t_props), ("crops (roi_align)", t_crops),
            ("network (gdet GoogLeNet)", t_net), ("  peer: torchvision googlenet", t_tv),
            ("NMS (postprocess)", t_nms), ("sum of stages", t_props + t_crops + t_net + t_nms)]
    for k, v in rows:
        click.echo(f"{k:<34} {1000 * v:>10.1f}")
    click.echo(f"network gdet / torchvision time ratio: {t_net / t_tv:.2f}")
    click.echo(f"pipeline over {len(imgs)} images: serial {1 / t_serial:.3f} img/s, overlapped ({workers} proposal "
               f"workers) {1 / t_overlap:.3f} img/s, speed-up x{t_serial / t_overlap:.2f}; slower stage bound "
               f"{1 / max(t_props / max(workers, 1), t_crops + t_net + t_nms):.3f} img/s")
