"""``tools/bench.py detect``: R-CNN detection time per image, split into proposals, crops, network and NMS.

Measured on synthetic 500 x 375 images with 2,000 proposals each (selective search's own boxes, topped up with
jittered copies when it finds fewer). The network is a random-initialised GoogLeNet detector (21 classes, as
VOC) at ``--input-size`` (224 as the paper on GPU; the shipped detector's 48 px on CPU by default, since 2,000
crops at 224 take minutes on a CPU), run by gdet's runtime (:func:`gdet.runtime.optimize`). Peers on the same
crops, same run: the detector's eager network, torchvision's ``googlenet`` eager and under ``torch.compile``;
the same weights in shared-feature mode (trunk once per image at shorter side 600, RoIAlign, the last stages per
region; no crops), against R-CNN mode's crops plus network; and the serial pipeline (proposals then detection) for
the overlapped one, where DataLoader workers compute the next images' proposals while the network runs.
"""
from __future__ import annotations

import copy
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


NET_RUNTIME = "gdet runtime"
NET_GRAPHS = "gdet runtime + CUDA graphs"
NET_EAGER = "gdet eager"
NET_TV = "torchvision googlenet eager"
NET_TV_COMPILE = "torchvision googlenet + compile"


def _tv_googlenet(classes: int, device: torch.device, channels_last: bool):
    import torchvision

    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=False,
                                      num_classes=classes).to(device).eval()
    return tv.to(memory_format=torch.channels_last) if channels_last else tv


def run_benchmark(device: str = "auto", n_props: int = 2000, input_size: int | None = None,
                  precision: str | None = None, chunk: int | None = None, n_images: int = 4,
                  workers: int | None = None, repeats: int = 3, source: str = "ss", backbone: str = "googlenet",
                  compile_what: str = "torchvision") -> dict:
    """Time every stage on one image and the whole pipeline over ``n_images``.

    Returns:
        ``{"device", "header", "stages": [(name, s/image)], "network": [(name, median s/image, warm-up s, min s,
        max s)], "shared_s", "serial_s", "overlap_s", "workers", "props_s"}``; network times cover all proposals
        of one image; ``shared_s`` is shared mode's image-to-probabilities time (its stand-in for crops + network).
    """
    from gdet.backbones import build_backbone
    from gdet.detection.model import Detector, detect_image
    from gdet.engine import autocast, resolve_device
    from gdet.errors import GdetError
    from gdet.nms import postprocess
    from gdet.runtime import optimize, resolve_precision

    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    size = input_size or (224 if gpu else 48)
    precision = resolve_precision(precision or "auto", dev)
    cl = gpu and precision != "fp32"  # how a GPU user with AMP runs a plain network
    chunk = chunk or (500 if gpu else 250)
    if chunk < 1 or n_props < 1 or repeats < 1:
        raise GdetError("--chunk, --proposals and --repeats must be >= 1")
    workers = (os.cpu_count() or 1) if workers is None else workers
    opts = {"max_side": 500}
    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(20)]
    kw = {"aux_logits": False} if backbone in ("googlenet", "googlenet_tv", "inception_v3") else {}
    if backbone in ("googlenet_tv", "inception_v3"):
        kw["transform_input"] = False
    det = Detector(build_backbone(backbone, num_classes=21, **kw), classes, input_size=size,
                   context_pad=max(1, round(16 * size / 224)), chunk_size=chunk).to(dev).eval()
    fast = optimize(det, device=dev, precision=precision)
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

    def user_net(model):
        @torch.inference_mode()
        def run():
            outs = []
            for c in chunks:
                if cl:
                    c = c.contiguous(memory_format=torch.channels_last)
                with autocast(dev, precision):
                    out = model(c)
                outs.append(torch.softmax((out.logits if hasattr(out, "logits") else out).float(), 1))
            return torch.cat(outs)

        return run

    def runtime_net(model):
        @torch.inference_mode()
        def run():
            return torch.cat([torch.softmax(model(c).logits, 1) for c in chunks])

        return run

    nets = {NET_RUNTIME: runtime_net(fast)}
    if gpu:
        nets[NET_GRAPHS] = runtime_net(optimize(det, device=dev, precision=precision, cuda_graphs=True))
    nets[NET_EAGER] = user_net(det.to(memory_format=torch.channels_last) if cl else det)
    tv = _tv_googlenet(21, dev, cl)
    nets[NET_TV] = user_net(tv)
    if compile_what in ("torchvision", "all"):
        nets[NET_TV_COMPILE] = user_net(torch.compile(tv))
    warm, times = {}, {k: [] for k in nets}
    for name, fn in nets.items():
        _sync(dev)
        t0 = time.perf_counter()
        fn()  # warm-up: compilation, graph capture, autotuning, oneDNN primitive caches
        warm[name] = time.perf_counter() - t0
        fn()
    probs = nets[NET_RUNTIME]()
    for _ in range(repeats):  # interleaved, so a change of load on a shared machine hits every network alike
        for name, fn in nets.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
    network = [(name, float(np.median(times[name])), warm[name], min(times[name]), max(times[name])) for name in nets]
    t_net = network[0][1]
    t_nms, _ = _timed(lambda: postprocess(boxes, probs, 0.05, 0.3, 100), dev, repeats)

    # The same weights in shared mode, through the same runtime: the image in, the proposals' probabilities out.
    sh = Detector(copy.deepcopy(det.backbone), classes, input_size=size, context_pad=det.context_pad,
                  chunk_size=chunk, mode="shared").to(dev).eval()
    sh_fast = optimize(sh, device=dev, precision=precision)
    with torch.inference_mode():
        t_shared, _ = _timed(lambda: sh_fast.score_regions(image01, boxes), dev, repeats)

    # Whole pipeline over several images: serial vs proposals in DataLoader workers, on the runtime's network.
    def serial():
        for im in imgs:
            b, _ = proposer.propose(im)
            detect_image(fast, im, _top_up(b, n_props, w, h), device=dev)

    t0 = time.perf_counter()
    serial()
    t_serial = (time.perf_counter() - t0) / len(imgs)
    loader = torch.utils.data.DataLoader(_ProposalImages(imgs, n_props, opts, source), batch_size=None,
                                         num_workers=max(workers, 1), prefetch_factor=2)
    t0 = time.perf_counter()
    for im, b in loader:
        detect_image(fast, im.numpy(), b, device=dev)
    t_overlap = (time.perf_counter() - t0) / len(imgs)

    name = torch.cuda.get_device_name(dev) if gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    origin = (f"selective search found {n_ss}; {'first kept' if n_ss >= n_props else 'topped up with jittered copies'}"
              if source == "ss" else "random boxes")
    header = (f"detect benchmark on {name}, torch {torch.__version__}: {w}x{h} images, {n_props} proposals "
              f"({origin}), {backbone} at {size} px, {precision}, chunks of {chunk}")
    stages = [("proposals (selective search, CPU)" if source == "ss" else "proposals (random stand-in)", t_props),
              ("crops (roi_align)", t_crops), ("network (gdet runtime)", t_net), ("NMS (postprocess)", t_nms),
              ("sum of stages", t_props + t_crops + t_net + t_nms)]
    return {"device": name, "header": header, "stages": stages, "network": network, "shared_s": t_shared,
            "shared_mode": sh.describe_mode(), "serial_s": t_serial,
            "overlap_s": t_overlap, "workers": workers, "props_s": t_props, "images": len(imgs)}


@click.command()
@click.option("--device", default="auto", show_default=True)
@click.option("--proposals", "n_props", default=2000, show_default=True, type=click.IntRange(min=1),
              help="Proposals per image.")
@click.option("--input-size", default=None, type=click.IntRange(16, 4096),
              help="Crop side (default: 224 on GPU, 48 on CPU).")
@click.option("--precision", default=None, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Network precision (default auto: fp16 channels-last on GPU, fp32 on CPU).")
@click.option("--chunk", default=None, type=click.IntRange(min=1),
              help="Crops per network call (default 500 on GPU, 250 on CPU).")
@click.option("--images", "n_images", default=4, show_default=True, type=click.IntRange(min=1),
              help="Images for the pipeline throughput.")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Proposal workers for the overlapped run (default: CPUs).")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--source", type=click.Choice(["ss", "random"]), default="ss", show_default=True,
              help="Proposals: selective search, or random boxes (no OpenCV ximgproc needed; proposal time ~0).")
@click.option("--backbone", default="googlenet", show_default=True,
              help="Detector backbone (googlenet_tv is torchvision's network, layer for layer).")
@click.option("--compile", "compile_what", type=click.Choice(["none", "torchvision"]), default="torchvision",
              show_default=True, help="Also time torchvision's googlenet under torch.compile.")
def main(device, n_props, input_size, precision, chunk, n_images, workers, repeats, source, backbone, compile_what):
    """Per-image detection time by stage, the network against its peers, and images/s serial vs overlapped."""
    r = run_benchmark(device, n_props, input_size, precision, chunk, n_images, workers, repeats, source, backbone,
                      compile_what)
    click.echo(r["header"])
    click.echo(f"{'stage':<36} {'ms/image':>10}")
    for k, v in r["stages"]:
        click.echo(f"{k:<36} {1000 * v:>10.1f}")
    t_net = r["network"][0][1]
    click.echo(f"{'network, same crops (interleaved)':<36} {'ms/image':>10} {'vs runtime':>10} {'warm-up s':>10} "
               f"{'min-max ms':>17}")
    for k, v, warm, lo, hi in r["network"]:
        click.echo(f"{k:<36} {1000 * v:>10.1f} {v / t_net:>9.2f}x {warm:>10.1f} {1000 * lo:>8.1f}-{1000 * hi:<8.1f}")
    tv = {k: v for k, v, *_ in r["network"]}
    def speed(peer: str) -> str:
        ratio = tv[peer] / t_net
        return f"{ratio:.2f}x as fast as {peer} ({'faster' if ratio >= 1 else 'slower'})"

    click.echo("gdet runtime: " + speed(NET_TV) + (f", {speed(NET_TV_COMPILE)}" if NET_TV_COMPILE in tv else ""))
    rcnn_s = r["stages"][1][1] + t_net
    click.echo(f"same weights, {r['shared_mode']}: {1000 * r['shared_s']:.1f} ms/image against R-CNN mode's crops + "
               f"network {1000 * rcnn_s:.1f} ms, speed-up x{rcnn_s / r['shared_s']:.2f}")
    wk = max(r["workers"], 1)
    net_stages = sum(v for k, v in r["stages"][1:4])
    click.echo(f"pipeline over {r['images']} images: serial {1 / r['serial_s']:.3f} img/s, overlapped ({r['workers']} "
               f"proposal workers) {1 / r['overlap_s']:.3f} img/s, speed-up x{r['serial_s'] / r['overlap_s']:.2f}; "
               f"slower stage bound {1 / max(r['props_s'] / wk, net_stages):.3f} img/s")
