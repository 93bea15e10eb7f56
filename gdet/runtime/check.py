"""Exactness report of :func:`gdet.runtime.optimize`: every registry backbone and a detector, each precision (and
compiled / CUDA-graph variants), against the original network in fp32 on the same device.

``python -m gdet.runtime.check --device cuda --out report.txt`` (used by ``tools/gpu_check.sh``).
"""
from __future__ import annotations

import copy
import math

import click
import torch
from torch import nn

# Relative error (max |out - ref| / max |ref|) accepted per precision. fp32 on CUDA: cuDNN picks other algorithms
# for the folded/fused layers than for the original ones (TF32 is switched off for the check).
# Reduced precision: bf16 keeps 8 significant bits, fp16 11 (measured on CPU in bf16: 3e-3 to 2.5e-2).
TOLERANCE = {("cpu", "fp32"): 1e-5, ("cuda", "fp32"): 1e-4, ("cpu", "bf16"): 5e-2, ("cuda", "bf16"): 5e-2,
             ("cuda", "fp16"): 1e-2}


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters in every BatchNorm2d (so that folding is exercised), and
    random convolution biases; returns ``model`` in eval mode. Deep networks grow their activations under these
    statistics (Inception-v3's logits reach ~5e7, past fp16's range: its fp16 rows are then marked n/a)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.eval()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|`` in float64."""
    out, ref = out.double(), ref.double()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


FP16_MAX = 65504.0


def _row(net: str, precision: str, variant: str, err: float, device: torch.device, ref_max: float = 0.0) -> dict:
    """``ok`` is None (shown n/a) for fp16 when the fp32 reference itself lies beyond fp16's range."""
    tol = TOLERANCE.get((device.type, precision), 0.1)
    ok = None if precision == "fp16" and ref_max > FP16_MAX else math.isfinite(err) and err <= tol
    return {"network": net, "precision": precision, "variant": variant, "rel_err": err, "tol": tol, "ok": ok}


@torch.no_grad()
def exactness_rows(device: torch.device | str = "cpu", precisions: tuple[str, ...] = ("fp32",),
                   names: list[str] | None = None, batch: int = 2, compile_names: tuple[str, ...] = (),
                   graphs: bool = True) -> list[dict]:
    """Compare ``optimize(model, precision=p)`` with the original fp32 model for each backbone in ``names``
    (default: all) and a googlenet_tv detector with box regression.

    Returns:
        rows ``{"network", "precision", "variant", "rel_err", "tol", "ok"}``; ``variant`` is ``runtime``,
        ``compile`` (for ``compile_names``, in the device's ``auto`` precision only: compiling takes a while) or ``cuda graphs`` (CUDA only, ``graphs``; its error is against the
        same precision without graphs, so it should be 0).
    """
    from gdet.backbones import build_backbone, list_backbones
    from gdet.detection.model import Detector
    from gdet.engine import resolve_device
    from gdet.runtime import optimize, resolve_precision

    dev = resolve_device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rows = []
    nets: list[tuple[str, nn.Module, int]] = []
    for name in names or list_backbones():
        torch.manual_seed(0)
        m = build_backbone(name, num_classes=10)
        nets.append((name, randomize_batch_norm(m), 64 if m.input_size == 224 else 75))
    torch.manual_seed(0)
    det = Detector(randomize_batch_norm(build_backbone("googlenet_tv", num_classes=3, aux_logits=False)),
                   ["a", "b"], input_size=64, bbox_reg=True, chunk_size=batch).eval()
    nets.append(("detector (googlenet_tv, bbox_reg)", det, 64))
    for name, model, size in nets:
        torch.manual_seed(1)
        x = torch.randn(batch + 1, 3, size, size, device=dev)  # batch + 1: the CUDA-graph runner pads a chunk

        def logits(out):
            return torch.cat([out.logits, out.bbox_deltas.flatten(1)], 1) if hasattr(out, "logits") else out

        ref = logits(model.to(dev)(x)).float()
        big = float(ref.abs().max())
        for prec in precisions:
            fast = optimize(model, device=dev, precision=prec)
            out = logits(fast(x))
            rows.append(_row(name, prec, "runtime", relative_error(out, ref), dev, big))
            if dev.type == "cuda" and graphs:
                graphed = optimize(model, device=dev, precision=prec, cuda_graphs=True, chunk_size=batch)
                rows.append(_row(name, prec, "cuda graphs", relative_error(logits(graphed(x)), out), dev, big))
            if name in compile_names and prec == resolve_precision("auto", dev):
                compiled = optimize(model, device=dev, precision=prec, compile=True)
                rows.append(_row(name, prec, "compile", relative_error(logits(compiled(x)), ref), dev))
        model.cpu()
    rows += _shared_rows(det, dev, precisions)
    return rows


def _shared_rows(det, dev: torch.device, precisions: tuple[str, ...]) -> list[dict]:
    """The detector's weights in shared mode (trunk once per image, RoIAlign, head per region): class
    probabilities and box deltas of 40 regions of a 120 x 160 image, runtime against the fp32 original."""
    from gdet.detection.model import Detector
    from gdet.runtime import optimize

    torch.manual_seed(2)
    shared = Detector(copy.deepcopy(det.backbone), det.class_names, input_size=det.input_size, bbox_reg=True,
                      mode="shared", shared={"scales": [200]})
    shared.load_state_dict(det.state_dict())
    shared = shared.to(dev).eval()
    image = torch.rand((3, 120, 160), device=dev)
    xy = torch.rand((40, 2), device=dev) * torch.tensor([110.0, 80.0], device=dev)
    boxes = torch.cat([xy, xy + 10 + torch.rand((40, 2), device=dev) * 30], 1)

    def flat(pd):
        return torch.cat([pd[0], pd[1].flatten(1)], 1)

    ref = flat(shared.score_regions(image, boxes))
    rows = [_row("detector (googlenet_tv, shared mode)", prec, "runtime",
                 relative_error(flat(optimize(shared, device=dev, precision=prec).score_regions(image, boxes)), ref),
                 dev) for prec in precisions]
    shared.cpu()
    return rows


def format_rows(rows: list[dict]) -> list[str]:
    lines = [f"{'network':<36} {'precision':<9} {'variant':<12} {'rel. error':>11} {'tolerance':>10}  ok"]
    for r in rows:
        ok = "n/a: reference beyond fp16 range" if r["ok"] is None else "yes" if r["ok"] else "NO"
        lines.append(f"{r['network']:<36} {r['precision']:<9} {r['variant']:<12} {r['rel_err']:>11.2e} "
                     f"{r['tol']:>10.0e}  {ok}")
    return lines


@click.command()
@click.option("--device", default="auto", show_default=True)
@click.option("--precisions", default=None, help="Comma list (default: fp32,fp16,bf16 on CUDA; fp32,bf16 on CPU).")
@click.option("--compile", "compile_names", default="googlenet_tv", show_default=True,
              help="Comma list of backbones also checked under torch.compile ('' for none).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the table here.")
def main(device, precisions, compile_names, out):
    """Relative error of gdet's runtime against the original fp32 networks; exit code 1 if one is off."""
    from gdet.engine import resolve_device

    dev = resolve_device(device)
    precs = tuple((precisions or ("fp32,fp16,bf16" if dev.type == "cuda" else "fp32,bf16")).split(","))
    rows = exactness_rows(dev, precs, compile_names=tuple(n for n in compile_names.split(",") if n))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    lines = [f"exactness of gdet.runtime.optimize on {name}, torch {torch.__version__}", *format_rows(rows)]
    text = "\n".join(lines)
    click.echo(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    if any(r["ok"] is False for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
