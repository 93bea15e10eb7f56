"""Shared-feature detection (Fast R-CNN style) on the R-CNN detector's weights: the trunk runs once per image.

R-CNN (:mod:`gdet.detection.model`) runs the whole network on every warped proposal. Here the same backbone is
split at its stride-16 stage (``feature_info``; inception 4e for both GoogLeNets): the trunk (image -> stride-16
map) runs once per image at a rescaled size (shorter side 600, longer side at most 1000, Fast R-CNN's setting),
``torchvision.ops.roi_align`` pools each proposal from that map to the size the stage has at the network's own
input size (14 x 14 for GoogLeNet at 224 px, 17 x 17 for Inception-v3 at 299 px), and only the remaining stages
(GoogLeNet: max-pool to 7 x 7, inception 5a/5b), the global pooling, the classifier and the optional box-regression
head run per region. Nothing is added to the network, so a classification or R-CNN checkpoint loads as-is.

With several scales the image pyramid is computed at inference and each region is pooled from the scale where its
area is closest to ``input_size ** 2`` pixels (the area the classifier was trained on); the trunk runs only at the
scales some region needs. In training each image takes one scale at random (Fast R-CNN), or with ``train_pyramid``
every region is pooled from its nearest scale as at inference.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torchvision.ops import roi_align

from gdet.detection import roi_align as nhwc
from gdet.detection.crops import context_boxes
from gdet.detection.labels import encode_boxes, label_regions
from gdet.detection.sampler import RegionSampler
from gdet.engine.device import autocast
from gdet.errors import GdetError

__all__ = ["BackboneSplit", "SharedOutput", "SharedDetectorNet", "split_backbone", "shared_stage", "rescale_image",
           "sample_image_regions", "shared_loss", "distillation_loss", "mix_distillation", "DEFAULT_SCALES",
           "DEFAULT_MAX_SIZE"]

DEFAULT_SCALES = (600,)
DEFAULT_MAX_SIZE = 1000
SHARED_STRIDE = 16


class BackboneSplit(NamedTuple):
    """A backbone cut after one named stage. Both halves are ``torch.fx.GraphModule``s that call the backbone's
    own submodules, so they share its parameters, buffers, device and train/eval mode.

    Attributes:
        trunk: ``Tensor[N, 3, H, W]`` normalised images -> ``Tensor[N, channels, h, w]`` stage output.
        rest: stage output -> the last feature map (what ``forward_features`` returns).
        stage: the stage's name in ``feature_info`` (a submodule of the backbone).
        channels, stride: of the stage output.
    """

    trunk: fx.GraphModule
    rest: fx.GraphModule
    stage: str
    channels: int
    stride: int


class SharedOutput(NamedTuple):
    """Per-region outputs, in the order of the concatenated boxes (the field names of the R-CNN
    ``DetectorOutput``, so training code can read either).

    logits (Tensor[R, C+1]); aux_logits (always empty: the aux heads sit in the trunk, per image, and are not
    used); bbox_deltas (Tensor[R, C, 4] or None without a box-regression head).
    """

    logits: Tensor
    aux_logits: tuple[Tensor, ...]
    bbox_deltas: Tensor | None


class _Features(nn.Module):
    """``forward_features`` as a module's ``forward``, so that torch.fx can trace it."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(x)


class _StageTracer(fx.Tracer):
    """Traces ``forward_features`` at the level of the backbone's stages: every submodule is one call except the
    cut stage's ancestors (so the graph can be split at the stage's output). The stages' insides are never
    traced, so blocks with Python control flow (the runtime's fused blocks, fp32 LRN) split as well."""

    def __init__(self, stage_path: str):
        super().__init__()
        self.stage_path = stage_path

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname == self.stage_path:
            return True
        ancestor = qualname in ("", "backbone") or self.stage_path.startswith(qualname + ".")
        return not ancestor or super().is_leaf_module(m, qualname)


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """Eval mode inside the block; afterwards every submodule gets its own mode back (a trainer may keep some,
    e.g. frozen batch norm, in eval mode while the rest trains)."""
    modes = [(m, m.training) for m in module.modules()]
    if not any(t for _, t in modes):  # already (an inference runtime's network): no walk of the tree per call
        yield module
        return
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def shared_stage(backbone: nn.Module, stride: int = SHARED_STRIDE) -> dict:
    """The deepest ``feature_info`` entry at ``stride`` (``{"name", "channels", "stride"}``)."""
    name = getattr(backbone, "backbone_name", "") or type(backbone).__name__
    hits = [f for f in getattr(backbone, "feature_info", []) if f["stride"] == stride]
    if not hits:
        raise GdetError(f"backbone {name!r} has no stride-{stride} stage in its feature_info")
    return dict(hits[-1])


def split_backbone(backbone: nn.Module, stage: str | None = None) -> BackboneSplit:
    """Split a registry backbone into trunk (up to and including ``stage``) and the remaining stages.

    The cut is made on the torch.fx graph of ``forward_features``, so any backbone whose stages are submodules
    named in ``feature_info`` splits without per-network code.

    Args:
        backbone: a :class:`~gdet.backbones.Backbone`.
        stage: a ``feature_info`` name (default: the deepest stride-16 stage, see :func:`shared_stage`).
    Returns:
        :class:`BackboneSplit`; ``split.rest(split.trunk(x))`` equals ``backbone.forward_features(x)``.
    """
    name = getattr(backbone, "backbone_name", "") or type(backbone).__name__
    infos = {f["name"]: f for f in getattr(backbone, "feature_info", [])}
    info = shared_stage(backbone) if stage is None else infos.get(stage)
    if info is None:
        raise GdetError(f"backbone {name!r} has no stage {stage!r}; its stages: {', '.join(infos)}")
    root = _Features(backbone)
    path = f"backbone.{info['name']}"
    try:
        graph = _StageTracer(path).trace(root)
    except Exception as e:  # a backbone with data-dependent control flow cannot be traced
        msg = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise GdetError(f"backbone {name!r}: forward_features cannot be traced for a split ({msg})") from None
    nodes = list(graph.nodes)
    cuts = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == path]
    if len(cuts) != 1:
        raise GdetError(f"backbone {name!r}: stage {info['name']!r} is called {len(cuts)} times in "
                        "forward_features; it must be called exactly once to split there")
    cut = nodes[cuts[0]]

    trunk_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes[:cuts[0] + 1]:
        env[n] = trunk_graph.node_copy(n, lambda a: env[a])
    trunk_graph.output(env[cut])

    rest_graph = fx.Graph()
    env2: dict[fx.Node, fx.Node] = {cut: rest_graph.placeholder("feat")}

    def lookup(a: fx.Node) -> fx.Node:
        if a not in env2:
            if a.op != "get_attr":
                raise GdetError(f"backbone {name!r}: the stages after {info['name']!r} also read {a.name!r}, "
                                "computed before it; the network cannot be split there")
            env2[a] = rest_graph.node_copy(a, lookup)
        return env2[a]

    for n in nodes[cuts[0] + 1:]:
        if n.op == "output":
            rest_graph.output(fx.map_arg(n.args[0], lookup))
        else:
            env2[n] = rest_graph.node_copy(n, lookup)
    trunk = fx.GraphModule(root, trunk_graph, class_name="Trunk")
    rest = fx.GraphModule(root, rest_graph, class_name="Rest")
    return BackboneSplit(trunk, rest, info["name"], int(info["channels"]), int(info["stride"]))


def rescale_image(image: Tensor, short_side: int, max_size: int | None = DEFAULT_MAX_SIZE
                  ) -> tuple[Tensor, tuple[float, float]]:
    """Resize an image so that its shorter side is ``short_side`` and its longer side at most ``max_size``.

    Bilinear, no antialiasing (the crops of R-CNN mode resize the same way). Sides are rounded to whole pixels, so
    the x and y factors can differ slightly; boxes must be scaled by each.

    Args:
        image (Tensor[3, H, W]): float image (0-1 or normalised: resizing is linear).
        short_side: target of ``min(H, W)``.
        max_size: cap on ``max(H, W)`` after resizing (None: no cap).
    Returns:
        (Tensor[3, H', W'], (fx, fy)) with ``fx = W' / W`` and ``fy = H' / H``.
    """
    h, w = image.shape[-2:]
    nh, nw = rescaled_size(h, w, short_side, max_size)
    if (nh, nw) == (h, w):
        return image, (1.0, 1.0)
    out = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    return out, (nw / w, nh / h)


def rescaled_size(h: int, w: int, short_side: int, max_size: int | None = DEFAULT_MAX_SIZE) -> tuple[int, int]:
    """``(H', W')`` that :func:`rescale_image` gives an ``h x w`` image."""
    s = short_side / min(h, w)
    if max_size is not None:
        s = min(s, max_size / max(h, w))
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


class _GraphCache(dict):
    """Captured CUDA graphs by name; a copy of the network (``copy.deepcopy``) starts without them: a graph
    replays the buffers of the network it was captured from."""

    def __deepcopy__(self, memo) -> "_GraphCache":
        return _GraphCache()


def _scale_boxes(boxes: Tensor, fx: float, fy: float, dtype: torch.dtype) -> Tensor:
    """Tensor[R, 4] boxes times (fx, fy, fx, fy) in ``dtype``; Python scalars, so no host-to-GPU copy (which
    would wait for the trunk to finish before the next kernel is queued)."""
    out = boxes.to(dtype=dtype, copy=True)
    out[:, 0::2] *= fx
    out[:, 1::2] *= fy
    return out


class SharedDetectorNet(nn.Module):
    """The shared-feature detection network on an R-CNN detector's backbone (and box-regression head).

    Its state dict is the R-CNN :class:`~gdet.detection.model.Detector`'s: ``backbone.*`` (the backbone's own keys,
    as in a classification checkpoint) and ``bbox_head.*`` when there is one. The trunk/rest split is kept out of
    the module tree (it only re-uses the backbone's modules), so nothing is stored twice.

    Args:
        backbone: a backbone whose classifier is ``C + 1``-way (background first), as in R-CNN mode.
        bbox_head: the R-CNN detector's ``nn.Linear(out_channels, 4 * C)`` on the globally pooled last feature map,
            or None.
        stage: where to pool regions (default: the deepest stride-16 stage of ``feature_info``).
        scales: shorter image side(s) in pixels at which the trunk runs.
        max_size: cap on the longer side.
        input_size: the warped crop side of R-CNN mode (``Detector.input_size``; default: the backbone's
            ``input_size``): sets the default ``pooled_size`` and the region area that picks a region's scale.
        pooled_size: side of the pooled region (default: the stage's size at ``input_size``, i.e. what the
            remaining stages see in R-CNN mode; measured once with a forward pass of the trunk).
        sampling_ratio: ``roi_align`` samples per bin and axis; 1 (a bilinear resize of the region's features, as
            R-CNN mode resizes its crops) costs a third of 2 on a CPU.
        chunk_size: regions per call of the remaining stages (bounds memory at 2,000 proposals).
        train_pyramid: with several scales, train as inference runs (every region pooled from the scale nearest
            the classifier's input) instead of one random scale per image (Fast R-CNN).
        context_pad: pool each proposal dilated as R-CNN's crop is (``context_pad`` pixels of context at
            ``input_size``); 0: the proposal itself (Fast R-CNN).
    """

    def __init__(self, backbone: nn.Module, bbox_head: nn.Linear | None = None, *, stage: str | None = None,
                 scales: Sequence[int] = DEFAULT_SCALES, max_size: int | None = DEFAULT_MAX_SIZE,
                 input_size: int | None = None, pooled_size: int | None = None, sampling_ratio: int = 1,
                 chunk_size: int = 256, train_pyramid: bool = False, context_pad: int = 0):
        super().__init__()
        self.backbone = backbone
        self.bbox_head = bbox_head
        scales = tuple(int(s) for s in scales)
        if not scales or min(scales) < 1:
            raise GdetError(f"shared detection: scales must be positive image sides, got {list(scales)}")
        if max_size is not None and max_size < 1:
            raise GdetError(f"shared detection: max_size must be positive, got {max_size}")
        if max_size is not None and max(scales) > max_size:
            # The longer side is at least the shorter one, so every image is capped below such a scale.
            raise GdetError(f"shared detection: scale {max(scales)} is above max_size {max_size}, so no image is "
                            f"rescaled to it; raise max_size (--max-size) or drop the scale")
        self.scales = scales
        self.max_size = None if max_size is None else int(max_size)
        # A plain attribute (a tuple, not a Module): the split's modules are the backbone's own.
        self.split = split_backbone(backbone, stage)
        self.sampling_ratio = int(sampling_ratio)
        self.chunk_size = max(1, int(chunk_size))
        self.input_size = int(input_size or backbone.input_size)
        self.region_area = float(self.input_size) ** 2
        self.pooled_size = int(pooled_size) if pooled_size else self._stage_size(self.input_size)
        self.channels_last = False
        self.train_pyramid = bool(train_pyramid)
        if not 0 <= 2 * int(context_pad) < self.input_size:
            raise GdetError(f"shared detection: context_pad must be >= 0 and < input_size / 2, got {context_pad}")
        self.context_pad = int(context_pad)
        # Inference on CUDA: RoIAlign through the NHWC kernel of :mod:`gdet.detection.roi_align` (same numbers as
        # torchvision's), and with ``cuda_graphs`` (set by the inference runtime) two CUDA graphs per image: the
        # trunk (one graph per image size) and pooling plus head (one per map size, for a chunk of regions, the last
        # chunk padded); the last ``graph_sizes`` sizes are kept.
        self.fast_pool = True
        self.cuda_graphs = False
        self.graph_sizes = 8
        self._graphs = _GraphCache()

    @torch.no_grad()
    def _stage_size(self, size: int) -> int:
        # Eval mode so that batch norm's running statistics are not touched.
        with _eval_mode(self.backbone):
            p = next(self.backbone.parameters())
            out = self.split.trunk(torch.zeros((1, 3, size, size), device=p.device, dtype=p.dtype))
        return int(out.shape[-1])

    @property
    def num_classes(self) -> int:
        """Object classes, without background."""
        return int(self.backbone.num_classes) - 1

    @property
    def stage(self) -> str:
        return self.split.stage

    @property
    def stride(self) -> int:
        return self.split.stride

    def image_features(self, image: Tensor, scales: Sequence[int] | None = None) -> list[tuple[Tensor, float, float]]:
        """Run the trunk on one image at each scale.

        Args:
            image (Tensor[3, H, W]): normalised image.
            scales: shorter sides (default: all of :attr:`scales`).
        Returns:
            list of ``(Tensor[1, C, h, w] stage map, fx, fy)``, one per scale; ``fx``/``fy`` map image pixels to
            pixels of the rescaled image.
        """
        levels = []
        dtype = next(self.backbone.parameters()).dtype  # fp16/bf16 after the inference runtime's cast
        for s in scales or self.scales:
            img, (fx_, fy_) = rescale_image(image, s, self.max_size)
            img = img[None].to(dtype)
            if self.channels_last:
                img = img.contiguous(memory_format=torch.channels_last)
            levels.append((self._trunk(img), fx_, fy_))  # 1 x C x h x w
        return levels

    def _graphed(self, x: Tensor) -> bool:
        return self.cuda_graphs and x.is_cuda and not self.backbone.training and not torch.is_grad_enabled()

    def _trunk(self, img: Tensor) -> Tensor:
        if not self._graphed(img):
            return self.split.trunk(img)
        from gdet.runtime.runtime import _GraphedCall

        if "trunk" not in self._graphs:
            self._graphs["trunk"] = _GraphedCall(self.split.trunk, max_graphs=self.graph_sizes)
        return self._graphs["trunk"](img)

    def _pool_nhwc(self, feat: Tensor, rois: Tensor) -> Tensor:
        """Regions (``rois`` in pixels of the map's input image) pooled by the NHWC kernel: torchvision's numbers,
        read in the map's own dtype and accumulated in fp32, no fp32 copy of the map."""
        return nhwc.roi_align_nhwc(feat, rois, self.pooled_size, 1.0 / self.stride, self.sampling_ratio)

    def _pool_and_head(self, feat: Tensor, rois: Tensor) -> tuple[Tensor, Tensor | None]:
        # One CUDA graph's body: the pooled regions (650 MB at 2,000 x 832 x 14 x 14 in fp16) never leave it.
        return self.forward_regions(self._pool_nhwc(feat, rois))

    def _graphed_regions(self, level: tuple[Tensor, float, float], boxes: Tensor
                         ) -> tuple[list[Tensor], list[Tensor | None]]:
        """Pooling and head of one image's regions from one map, replayed from a CUDA graph per map size, in
        chunks of ``chunk_size`` (the last one padded with empty boxes, whose outputs are dropped)."""
        from gdet.runtime.runtime import _GraphedCall

        feat, fx_, fy_ = level
        if "regions" not in self._graphs:
            self._graphs["regions"] = _GraphedCall(self._pool_and_head, max_graphs=self.graph_sizes)
        call = self._graphs["regions"]
        rois = _scale_boxes(boxes, fx_, fy_, torch.float32)
        logits, deltas = [], []
        for start in range(0, rois.shape[0], self.chunk_size):
            part = rois[start:start + self.chunk_size]
            k = part.shape[0]
            if k < self.chunk_size:
                part = torch.cat([part, part.new_zeros((self.chunk_size - k, 4))])
            lg, dl = call(feat, part)
            logits.append(lg[:k])
            deltas.append(None if dl is None else dl[:k])
        return logits, deltas

    def _head(self, pooled: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self._graphed(pooled):
            return self.forward_regions(pooled)
        from gdet.runtime.runtime import Runner

        if "head" not in self._graphs:
            self._graphs["head"] = Runner(self.forward_regions, chunk_size=self.chunk_size, cuda_graphs=True)
        return self._graphs["head"](pooled)

    def _nearest_level(self, boxes: Tensor, factors: Sequence[tuple[float, float]]) -> Tensor:
        """Tensor[R]: for each box, the index of the ``(fx, fy)`` scale where its area is nearest ``input_size**2``."""
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)  # R
        scaled = torch.stack([area * (fx_ * fy_) for fx_, fy_ in factors], 1)  # R x L
        return (scaled - self.region_area).abs().argmin(1)

    def needed_scales(self, image: Tensor, boxes: Tensor) -> list[int]:
        """The scales (of :attr:`scales`, in order) that some of ``boxes`` is pooled from: the trunk skips the rest."""
        if len(self.scales) == 1 or boxes.shape[0] == 0:
            return list(self.scales)
        h, w = image.shape[-2:]
        factors = []
        for s in self.scales:
            nh, nw = rescaled_size(h, w, s, self.max_size)
            factors.append((nw / w, nh / h))
        used = set(self._nearest_level(boxes.float(), factors).tolist())
        return [s for i, s in enumerate(self.scales) if i in used]

    def pool(self, levels: list[tuple[Tensor, float, float]], boxes: Tensor) -> Tensor:
        """Pool regions of one image from its stage maps.

        Args:
            levels: from :meth:`image_features`.
            boxes (Tensor[R, 4]): (x1, y1, x2, y2) in pixels of the original image.
        Returns:
            Tensor[R, C, P, P] with ``P = pooled_size``; each region comes from the level where its area is
            closest to ``input_size ** 2`` pixels.
        """
        p = self.pooled_size

        def one(level, b: Tensor) -> Tensor:
            feat, fx_, fy_ = level
            # Pooled in fp32 (fp64 in the tests) even from a half-precision map: fp16 box coordinates would be
            # 0.5 px apart at 512-1024 px.
            work = torch.float64 if feat.dtype == torch.float64 else torch.float32
            rois = _scale_boxes(b, fx_, fy_, work)
            if self.fast_pool and not (torch.is_grad_enabled() and feat.requires_grad):
                if work == torch.float32 and nhwc.available(feat):
                    return self._pool_nhwc(feat, rois)
                if feat.dtype == work and nhwc.bags_available(feat, self.sampling_ratio):
                    return nhwc.roi_align_bags(feat, rois, p, 1.0 / self.stride, self.sampling_ratio)
            return roi_align(feat.to(work), [rois], (p, p), spatial_scale=1.0 / self.stride,
                             sampling_ratio=self.sampling_ratio, aligned=True).to(feat.dtype)

        if len(levels) == 1:
            return one(levels[0], boxes)
        which = self._nearest_level(boxes, [(fx_, fy_) for _, fx_, fy_ in levels])
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        first = levels[0][0]
        out = torch.empty((boxes.shape[0], first.shape[1], p, p), dtype=first.dtype, device=first.device,
                          memory_format=fmt)
        for i, level in enumerate(levels):
            m = which == i
            if m.any():
                out[m] = one(level, boxes[m])
        return out

    def forward_regions(self, pooled: Tensor) -> tuple[Tensor, Tensor | None]:
        """The remaining stages, global pooling, classifier and box head on pooled regions.

        Args:
            pooled (Tensor[R, C, P, P]).
        Returns:
            logits (Tensor[R, C+1]) and deltas (Tensor[R, C, 4] or None).
        """
        if self.channels_last:
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        feats = self.split.rest(pooled)  # R x 1024 x 7 x 7 for GoogLeNet
        logits = self.backbone.forward_head(feats)  # R x (C + 1)
        deltas = None
        if self.bbox_head is not None:
            v = torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1)  # R x 1024
            deltas = self.bbox_head(v).view(-1, self.num_classes, 4)  # R x C x 4
        return logits, deltas

    def forward(self, images: Tensor | Sequence[Tensor], boxes: Sequence[Tensor]) -> SharedOutput:
        """Score regions of a batch of images.

        Args:
            images: normalised images, ``Tensor[B, 3, H, W]`` or a list of ``Tensor[3, H_i, W_i]``.
            boxes: ``B`` tensors ``Tensor[R_i, 4]`` (x1, y1, x2, y2) in pixels of each image.
        Returns:
            :class:`SharedOutput` over the ``sum R_i`` regions, in order.
        """
        images = list(images)
        if len(images) != len(boxes):
            raise ValueError(f"got {len(images)} images but {len(boxes)} box sets")
        per_image = []
        for img, b in zip(images, boxes):
            if b.shape[0] == 0:
                per_image.append((None, b))
                continue
            if self.context_pad:  # what R-CNN's crop of the proposal holds; labels stay the proposal's
                b = context_boxes(b, self.input_size, self.context_pad)
            # The backbone's mode, not this module's: a Detector that holds this network outside its module tree
            # switches only the (shared) backbone with train() / eval().
            if self.backbone.training and len(self.scales) > 1 and not self.train_pyramid:
                # Fast R-CNN: one random scale per training image (torch's RNG, so a seeded run repeats).
                scales = [self.scales[int(torch.randint(len(self.scales), ()))]]
            else:
                scales = self.needed_scales(img, b)
            per_image.append((self.image_features(img, scales), b.to(img.device)))
        # Regions of all images go through the remaining stages together, in chunks of chunk_size.
        pooled: list[Tensor] = []
        logits: list[Tensor] = []
        deltas: list[Tensor | None] = []

        def flush() -> None:
            if pooled:
                lg, dl = self._head(pooled[0] if len(pooled) == 1 else torch.cat(pooled))
                logits.append(lg)
                deltas.append(dl)
                pooled.clear()

        for levels, b in per_image:
            if (levels is not None and len(levels) == 1 and self._graphed(levels[0][0]) and self.fast_pool
                    and nhwc.available(levels[0][0])):
                flush()  # regions of earlier images first, in order
                lg, dl = self._graphed_regions(levels[0], b)
                logits += lg
                deltas += dl
                continue
            for start in range(0, b.shape[0], self.chunk_size):
                pooled.append(self.pool(levels, b[start:start + self.chunk_size]))
                if sum(x.shape[0] for x in pooled) >= self.chunk_size:
                    flush()
        flush()
        if not logits:
            p = next(self.parameters())
            empty = p.new_zeros((0, self.num_classes + 1))
            box = p.new_zeros((0, self.num_classes, 4)) if self.bbox_head is not None else None
            return SharedOutput(empty, (), box)
        box = torch.cat(deltas) if self.bbox_head is not None else None
        return SharedOutput(torch.cat(logits), (), box)

    @torch.no_grad()
    def score_regions(self, image01: Tensor, boxes: Tensor, precision: str = "fp32",
                      channels_last: bool = False) -> tuple[Tensor, Tensor | None]:
        """Class probabilities (and box deltas) of regions of one image: the shared-mode counterpart of
        ``Detector.score_regions``, with the same arguments and results.

        Args:
            image01 (Tensor[3, H, W]): float RGB in 0-1 on the model's device.
            boxes (Tensor[N, 4]): proposals in pixels.
            precision: fp32, bf16 or fp16 for the network.
            channels_last: run convolutions in channels-last memory format.
        Returns:
            probs (Tensor[N, C+1]) float32 softmax, background first; deltas (Tensor[N, C, 4]) or None.
        """
        keep = self.channels_last  # the inference runtime sets it for an NHWC network
        self.channels_last = channels_last or keep
        try:
            with _eval_mode(self):
                device = image01.device
                boxes = boxes.to(device=device, dtype=torch.float32).reshape(-1, 4)
                image_norm = self.backbone.normalize(image01[None].float())[0]
                with autocast(device, precision):
                    out = self([image_norm], [boxes])
                probs = F.softmax(out.logits.float(), dim=1)
                deltas = out.bbox_deltas.float() if out.bbox_deltas is not None else None
        finally:
            self.channels_last = keep
        return probs, deltas

    @classmethod
    def from_detector(cls, detector: nn.Module, **kwargs) -> "SharedDetectorNet":
        """The shared-feature network on an R-CNN ``Detector``'s own backbone and box head (shared, not copied),
        at the detector's crop size unless ``input_size`` is given."""
        kwargs.setdefault("input_size", getattr(detector, "input_size", None))
        return cls(detector.backbone, getattr(detector, "bbox_head", None), **kwargs)


def sample_image_regions(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_ignore: Tensor | None = None,
                         *, regions: int = 64, fg_fraction: float = 0.25, fg_iou: float = 0.5,
                         bg_iou_lo: float = 0.1, bbox_iou: float = 0.5, seed: int = 0) -> dict[str, Tensor]:
    """One image's share of an image-centric mini-batch (Fast R-CNN: 64 regions, 25% foreground).

    Labelling is :func:`~gdet.detection.labels.label_regions` (foreground IoU >= ``fg_iou``, background in
    ``[bg_iou_lo, fg_iou)``, ground-truth boxes added as foreground), the draw is
    :class:`~gdet.detection.sampler.RegionSampler` over this image alone (a function of ``seed``).

    Args:
        proposals (Tensor[P, 4]); gt_boxes (Tensor[G, 4]); gt_labels (Tensor[G] in 0..C-1); gt_ignore (Tensor[G]).
        regions: regions drawn (fewer only when the image has none to draw).
        bbox_iou: regions with IoU above this (and foreground) train the box regression.
    Returns:
        ``{"boxes": Tensor[R, 4], "labels": Tensor[R] (0 background), "bbox_targets": Tensor[R, 4],
        "bbox_use": Tensor[R] bool}``.
    """
    r = label_regions(proposals, gt_boxes, gt_labels, gt_ignore, fg_iou=fg_iou, bg_iou_lo=bg_iou_lo)
    if not bool((r.labels >= 0).any()):
        z = torch.zeros((0, 4))
        return {"boxes": z, "labels": torch.zeros(0, dtype=torch.int64), "bbox_targets": z,
                "bbox_use": torch.zeros(0, dtype=torch.bool)}
    idx = RegionSampler([r], regions, fg_fraction, seed=seed).epoch(0, 1)[0][:, 1]
    boxes, labels, gt_index = r.boxes[idx], r.labels[idx], r.gt_index[idx]
    use = (labels > 0) & (r.iou[idx] > bbox_iou)
    targets = torch.zeros((idx.numel(), 4))
    if bool(use.any()):
        targets[use] = encode_boxes(boxes[use], gt_boxes.float().reshape(-1, 4)[gt_index[use]])
    return {"boxes": boxes, "labels": labels, "bbox_targets": targets, "bbox_use": use}


def distillation_loss(logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Knowledge distillation (Hinton et al., 2015) of a batch of regions: ``KL(teacher || student)`` of the class
    distributions softened by ``temperature`` (both divided by it in log space), times ``temperature ** 2`` so
    that the gradient keeps its scale whatever the temperature, averaged over the regions.

    Args:
        logits (Tensor[R, C+1]): the student's.
        teacher_probs (Tensor[R, C+1]): the teacher's class probabilities (a detector's softmax, or an
            ensemble's average).
    """
    t = float(temperature)
    log_q = F.log_softmax(torch.log(teacher_probs.float().clamp_min(1e-12)) / t, dim=1)
    log_p = F.log_softmax(logits.float() / t, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(1).mean() * (t * t)


def mix_distillation(cls_loss: Tensor, logits: Tensor, teacher_probs: Tensor, weight: float,
                     temperature: float) -> tuple[Tensor, Tensor]:
    """The classification loss with a teacher, as its two weighted parts (they add up to it):
    ``(1 - weight) x cls_loss`` and ``weight x`` :func:`distillation_loss` ``(logits, teacher_probs, temperature)``."""
    w = float(weight)
    return (1.0 - w) * cls_loss, w * distillation_loss(logits, teacher_probs, temperature)


def shared_loss(model, images_norm: Sequence[Tensor], targets: Sequence[dict], proposals: Sequence[Tensor], *,
                regions_per_image: int = 64, fg_fraction: float = 0.25, fg_iou: float = 0.5, bg_iou_lo: float = 0.1,
                bbox_iou: float = 0.5, bbox_weight: float = 1.0, seed: int = 0, teacher=None,
                distill_weight: float = 0.5, distill_temperature: float = 1.0) -> dict[str, Tensor]:
    """Loss of one image-centric mini-batch (Fast R-CNN: 2 images x 64 regions, 25% foreground).

    Cross-entropy over ``C + 1`` classes, plus smooth-L1 box regression (beta 1/9, summed over the regions that
    regress and divided by all regions, as R-CNN mode's ``detection_loss``) when the model has a box head.

    Args:
        model: called as ``model(images, boxes)`` -> an object with ``logits`` (Tensor[R, C+1]) and
            ``bbox_deltas`` (Tensor[R, C, 4] or None): a :class:`SharedDetectorNet` or a wrapper (DDP) around it.
        images_norm: normalised ``Tensor[3, H_i, W_i]`` on the model's device (flip them, and their boxes, first
            for augmentation).
        targets: per image ``{"boxes": Tensor[G, 4], "labels": Tensor[G] in 0..C-1, "ignore": Tensor[G] bool}``
            (``ignore`` optional).
        proposals: per image ``Tensor[P, 4]``.
        seed: draws the regions (pass e.g. ``epoch * steps + step`` for a reproducible run).
        teacher: optional ``teacher(i, boxes) -> Tensor[R, C+1]``, class probabilities of regions ``boxes`` of
            image ``i`` (as passed here, flipped or not): the classification loss becomes ``(1 - distill_weight)
            x cross-entropy + distill_weight x`` :func:`distillation_loss` at ``distill_temperature``.
    Returns:
        ``{"loss"}`` (with gradient) and detached ``"loss_cls"`` (the cross-entropy), ``"loss_distill"`` (with a
        teacher, weighted by ``distill_weight``), ``"loss_bbox"`` (with a box head), ``"acc"``, ``"num_fg"``,
        ``"num_regions"``.
    """
    if not images_norm:
        raise ValueError("shared_loss needs at least one image")
    device = images_norm[0].device
    picks = [sample_image_regions(p.cpu(), t["boxes"].cpu(), t["labels"].cpu(),
                                  t["ignore"].cpu() if t.get("ignore") is not None else None,
                                  regions=regions_per_image, fg_fraction=fg_fraction, fg_iou=fg_iou,
                                  bg_iou_lo=bg_iou_lo, bbox_iou=bbox_iou, seed=seed * 1009 + i)
             for i, (p, t) in enumerate(zip(proposals, targets))]
    out = model(list(images_norm), [s["boxes"].to(device) for s in picks])
    labels = torch.cat([s["labels"] for s in picks]).to(device)
    n = labels.numel()
    if n == 0:
        raise GdetError("shared_loss: no region to train on in this batch (no proposals and no ground truth)")
    loss_cls = F.cross_entropy(out.logits.float(), labels)
    loss = loss_cls
    res = {"loss_cls": loss_cls.detach()}
    if teacher is not None:
        with torch.no_grad():
            soft = torch.cat([teacher(i, s["boxes"]) for i, s in enumerate(picks)]).to(device)
        ce_part, kd_part = mix_distillation(loss_cls, out.logits, soft, distill_weight, distill_temperature)
        loss = ce_part + kd_part
        res["loss_distill"] = kd_part.detach()
    if out.bbox_deltas is not None:
        use = torch.cat([s["bbox_use"] for s in picks]).to(device)
        idx = torch.nonzero(use).flatten()
        if idx.numel():
            t = torch.cat([s["bbox_targets"] for s in picks]).to(device)[idx]
            pred = out.bbox_deltas[idx, labels[idx] - 1].float()
            box_loss = F.smooth_l1_loss(pred, t, beta=1.0 / 9, reduction="sum") / n
        else:
            box_loss = out.bbox_deltas.sum() * 0.0  # keeps every parameter in the graph (DDP)
        loss = loss + bbox_weight * box_loss
        res["loss_bbox"] = box_loss.detach()
    res["loss"] = loss
    res["acc"] = (out.logits.detach().argmax(1) == labels).float().mean()
    res["num_fg"] = (labels > 0).sum()
    res["num_regions"] = torch.tensor(n, device=device)
    return res
