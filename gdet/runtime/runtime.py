"""One inference runtime for every network gdet runs: exact rewrites, precision, memory format, torch.compile and
CUDA graphs over fixed-size chunks."""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn

from gdet.errors import GdetError
from gdet.runtime.fuse import onednn_available, rewrite, use_onednn

__all__ = ["Runner", "chunk_spans", "optimize", "resolve_precision"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``fp16`` on CUDA, ``fp32`` elsewhere; ``fp16`` on a CPU becomes ``bf16`` (as
    :func:`gdet.engine.autocast` does). Unknown names raise :class:`~gdet.errors.GdetError`."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in _DTYPES:
        raise GdetError(f"unknown precision {precision!r} (use auto, fp32, bf16 or fp16)")
    if precision == "fp16" and device.type != "cuda":
        return "bf16"
    return precision


def _default_channels_last(device: torch.device) -> bool:
    # Channels-last is the fast layout for cuDNN in fp16/bf16 and for oneDNN in fp32 on the CPU (paper GoogLeNet,
    # batch 8 at 160 px, 2 cores: 85 ms channels-last vs 132 ms NCHW after the same rewrites).
    return device.type in ("cuda", "cpu")


def _map_tensors(out: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``fn`` to every tensor of an output: a tensor, or a (possibly nested, possibly named) tuple or list
    of tensors; other leaves (None) pass through."""
    if isinstance(out, Tensor):
        return fn(out)
    if isinstance(out, tuple):
        vals = [_map_tensors(o, fn) for o in out]
        return type(out)(*vals) if hasattr(out, "_fields") else tuple(vals)
    if isinstance(out, list):
        return [_map_tensors(o, fn) for o in out]
    return out


def chunk_spans(n: int, chunk_size: int, pad: bool) -> list[tuple[int, int, int]]:
    """``(start, stop, size)`` of each chunk of ``n`` items: ``size`` is ``stop - start``, or ``chunk_size`` for
    every chunk when ``pad`` (the last one is then padded up to it)."""
    if chunk_size < 1:
        raise GdetError(f"chunk size must be >= 1, got {chunk_size}")
    return [(s, min(s + chunk_size, n), chunk_size if pad else min(chunk_size, n - s)) for s in range(0, n, chunk_size)]


def _cat_outputs(outs: list[Any]) -> Any:
    first = outs[0]
    if isinstance(first, Tensor):
        return torch.cat(outs)
    if isinstance(first, tuple):
        cols = [_cat_outputs([o[i] for o in outs]) if first[i] is not None and not (
            isinstance(first[i], tuple) and len(first[i]) == 0) else first[i] for i in range(len(first))]
        return type(first)(*cols) if hasattr(first, "_fields") else tuple(cols)
    raise TypeError(f"cannot concatenate outputs of type {type(first).__name__}")


class _GraphedCall:
    """Replays one captured CUDA graph per input shape; inputs (one or more tensors) are copied into static
    buffers and the outputs are cloned out of the graph's static ones (the next replay overwrites them). At most
    ``max_graphs`` graphs are kept (the least recently used is dropped), which bounds their memory when shapes
    vary (``None``: no bound)."""

    def __init__(self, fn: Callable[[Tensor], Any], warmup: int = 3, max_graphs: int | None = 8):
        self.fn, self.warmup, self.max_graphs = fn, warmup, max_graphs
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Any]] = {}

    def _capture(self, xs: tuple[Tensor, ...]):
        static = tuple(x.clone() for x in xs)
        device = xs[0].device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):  # cuDNN and Triton autotuning, allocator warm-up: out of the graph
                self.fn(*static)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(*static)
        return graph, static, out

    def __call__(self, *xs: Tensor) -> Any:
        key = tuple((tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
                    for x in xs)
        if key not in self.graphs:
            if self.max_graphs is not None and len(self.graphs) >= self.max_graphs:
                self.graphs.pop(next(iter(self.graphs)))  # the oldest shape: bounds the graphs' memory
            self.graphs[key] = self._capture(xs)
        else:
            self.graphs[key] = self.graphs.pop(key)  # most recently used last
        graph, static, out = self.graphs[key]
        for buf, x in zip(static, xs):
            buf.copy_(x)
        graph.replay()
        return _map_tensors(out, lambda t: t.clone())


class Runner:
    """Chunked batched inference: ``run(batch)`` feeds ``batch`` to ``model`` in chunks of ``chunk_size`` and
    concatenates the outputs.

    With ``pad`` every chunk has exactly ``chunk_size`` items (the last one padded with zeros, its padding
    dropped from the output), so a compiled network or a CUDA graph sees one shape only. ``cuda_graphs`` (CUDA
    only; ignored elsewhere) captures the model's forward once per input shape and replays it; it implies ``pad``.

    Args:
        model: a module (normally from :func:`optimize`) mapping ``Tensor[N, 3, S, S]`` to a tensor or a tuple of
            tensors with ``N`` rows.
        chunk_size: items per network call.
    """

    def __init__(self, model: nn.Module, *, chunk_size: int = 256, pad: bool = False, cuda_graphs: bool = False):
        if chunk_size < 1:
            raise GdetError(f"chunk size must be >= 1, got {chunk_size}")
        self.model = model
        self.chunk_size = int(chunk_size)
        self.cuda_graphs = bool(cuda_graphs)
        self.pad = bool(pad) or self.cuda_graphs
        self._graphed = _GraphedCall(model) if self.cuda_graphs else None

    def _call(self, x: Tensor) -> Any:
        if self._graphed is not None and x.device.type == "cuda":
            return self._graphed(x)
        return self.model(x)

    @torch.no_grad()
    def run(self, batch: Tensor) -> Any:
        """Args: batch (Tensor[N, ...]). Returns the model's output for all ``N`` items (Tensor[N, ...] or a tuple
        of them); an empty batch gives the output of a zero-row call."""
        n = batch.shape[0]
        if n == 0:
            return self.model(batch)
        outs = []
        for start, stop, size in chunk_spans(n, self.chunk_size, self.pad):
            x = batch[start:stop]
            if size > x.shape[0]:
                fill = x.new_zeros((size - x.shape[0], *x.shape[1:]))
                x = torch.cat([x, fill]).contiguous(memory_format=_memory_format(batch))
            outs.append(_map_tensors(self._call(x), lambda t, n=stop - start: t[:n]))
        return outs[0] if len(outs) == 1 else _cat_outputs(outs)

    __call__ = run


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _inference_mode(fn: Callable) -> Callable:
    # One autograd mode for every call, so the compiled graph's guards never force a recompilation.
    def call(*args, **kwargs):
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return call


def _inference_only(module: nn.Module, args):
    if module.training:
        raise GdetError("an optimized network is for inference only; train the original model")


def optimize(model: nn.Module, *, device: torch.device | str = "cpu", precision: str = "auto",
             channels_last: bool | None = None, fuse: bool = True, compile: bool = False,
             cuda_graphs: bool = False, chunk_size: int | None = None, onednn: bool = False,
             inplace: bool = False) -> nn.Module:
    """The fastest exact inference form of a gdet network: a backbone, a :class:`~gdet.detection.model.Detector`,
    any module built from gdet's blocks (e.g. a MultiBox network), or a holder of such networks: an
    :class:`~gdet.detection.model.EnsembleDetector` (each member), a
    :class:`~gdet.classification.model.Classifier` or a ``MultiBoxProposer`` (its ``.model``; a shallow copy is
    returned).

    Rewrites (exact in fp32): batch norm folded into the convolutions, each Inception block's parallel 1x1
    convolutions fused into one (fused conv -> ReLU -> split), aux heads dropped, transform_input inlined, LRN in
    fp32. Then the weights are cast to ``precision``, put in ``channels_last`` layout and moved to ``device``.
    The returned module keeps the class, attributes and methods of ``model`` (``normalize``, ``score_regions``,
    ``crop``...) and its forward contract; it casts inputs to its dtype and layout itself and returns float32
    outputs. It is eval-only (calling it in training mode raises) and its parameters need no gradient.

    Args:
        model: the network; never modified unless ``inplace``.
        device: where it runs.
        precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16`` (bf16 on a CPU).
        channels_last: NHWC weights and inputs (default: True, the faster layout measured on CPU and CUDA).
        fuse: fuse parallel 1x1 convolutions (batch norm is always folded).
        compile: ``torch.compile`` the forward (inductor; compiled kernels are cached by torch in its cache
            directory, ``TORCHINDUCTOR_CACHE_DIR``, so a second process starts faster).
        cuda_graphs: on CUDA, run forward through a CUDA graph captured per input shape; with ``chunk_size``
            every call is split into chunks of that size, the last one padded, so one graph serves any batch.
            Ignored on other devices.
        chunk_size: with ``cuda_graphs``, the fixed chunk (e.g. the detector's ``chunk_size``; 1 for batch-1
            classification). Default: the model's ``chunk_size`` attribute if any, else none (one graph per shape).
        onednn: on a CPU in fp32 without ``compile``, run convolutions through oneDNN with pre-packed weights
            and fused ReLU (measured neutral on whole networks, hence off by default).
        inplace: rewrite ``model`` itself instead of a deep copy.
    Returns:
        the optimized module (with ``inplace``, ``model`` itself unless ``model`` is a single rewritten block).
    """
    # Building the rewritten modules (nn.Conv2d's initialisation) must not move the caller's random stream: a
    # training run that evaluates through the runtime stays bit-identical to one that does not.
    with torch.random.fork_rng(devices=[]):
        return _optimize(model, device=device, precision=precision, channels_last=channels_last, fuse=fuse,
                         compile=compile, cuda_graphs=cuda_graphs, chunk_size=chunk_size, onednn=onednn,
                         inplace=inplace)


def _optimize(model: nn.Module, *, device, precision, channels_last, fuse, compile, cuda_graphs, chunk_size, onednn,
              inplace) -> nn.Module:
    from gdet.engine import resolve_device

    if isinstance(device, str):
        device = resolve_device(device)
    prec = resolve_precision(precision, device)
    if not isinstance(model, nn.Module):
        # Plain holders of networks: an EnsembleDetector (``members``), a Classifier or a MultiBoxProposer
        # (``model``). A shallow copy keeps their other fields; the networks inside are optimized.
        kw = dict(device=device, precision=precision, channels_last=channels_last, fuse=fuse, compile=compile,
                  cuda_graphs=cuda_graphs, chunk_size=chunk_size, onednn=onednn, inplace=inplace)
        out = model if inplace else copy.copy(model)
        if isinstance(getattr(model, "members", None), list):
            out.members = [optimize(m, **kw) for m in model.members]
        elif isinstance(getattr(model, "model", None), nn.Module):
            out.model = optimize(model.model, **kw)
        else:
            raise TypeError(f"optimize() needs a module, or an object holding one in .model or .members; got "
                            f"{type(model).__name__}")
        return out
    net = model if inplace else copy.deepcopy(model)
    net = rewrite(net.eval(), fuse=fuse).eval()  # the new blocks are built in training mode
    net.requires_grad_(False)
    dtype = _DTYPES[prec]
    cl = _default_channels_last(device) if channels_last is None else bool(channels_last)
    net.to(device=device, dtype=dtype)
    if cl:
        net.to(memory_format=torch.channels_last)
    # oneDNN with pre-packed weights and ReLU inside the convolution: 1.1-1.4x per layer in isolation, but no
    # gain on whole networks on a quiet 2-core CPU (GoogLeNet 50.7 vs 50.8 ms per batch of 8 at 160 px), so off by
    # default. torch.compile does its own packing, so it always gets the plain layers.
    onednn = bool(onednn) and device.type == "cpu" and dtype == torch.float32 and not compile and onednn_available()
    if onednn:
        net = use_onednn(net)
    shared = getattr(net, "mode", None) == "shared"
    if callable(getattr(net, "refresh_shared", None)):
        # After every module replacement: a shared-mode detector's trunk/head split must call the final modules.
        # Its CUDA graphs live inside that split (the trunk per image size, the head per chunk).
        net.refresh_shared(channels_last=cl, compile=compile, cuda_graphs=cuda_graphs and device.type == "cuda")
    fmt = torch.channels_last if cl else torch.contiguous_format

    def prepare(module, args):
        _inference_only(module, args)
        if args and isinstance(args[0], Tensor) and args[0].is_floating_point():
            x = args[0]
            if x.dim() == 4:
                x = x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
            else:
                x = x.to(device=device, dtype=dtype)
            return (x, *args[1:])
        return None

    def finish(module, args, out):
        if dtype == torch.float32:
            return out
        return _map_tensors(out, lambda t: t.float() if t.is_floating_point() else t)

    net.register_forward_pre_hook(prepare)
    net.register_forward_hook(finish)
    forward = type(net).forward.__get__(net)
    changed = False
    if compile:
        forward = _inference_mode(torch.compile(forward, dynamic=False))
        changed = True
    if cuda_graphs and device.type == "cuda" and not shared:
        size = chunk_size or getattr(net, "chunk_size", None)
        forward = Runner(forward, chunk_size=size, cuda_graphs=True) if size else _GraphedCall(forward)
        changed = True
    if changed:
        # An instance attribute shadows the class's forward; hooks and methods (score_regions...) still apply.
        net.forward = forward
    net.runtime_info = {"device": str(device), "precision": prec, "channels_last": cl, "fused": fuse,
                        "compiled": bool(compile), "onednn": onednn, "cuda_graphs": bool(cuda_graphs and device.type == "cuda")}
    return net
