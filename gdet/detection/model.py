"""The R-CNN detector: a registry backbone as a (classes + background)-way region classifier, plus inference.

Pipeline of :meth:`Detector.detect`: proposals -> context-padded warped crops (:mod:`gdet.detection.crops`) ->
softmax over ``C + 1`` classes (background first) -> optional box regression -> per-class NMS -> top detections.
In ``shared`` mode the same weights score regions Fast R-CNN's way (:mod:`gdet.detection.shared`): the trunk
runs once per image and regions are pooled from its stride-16 map.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones import Backbone, build_backbone, is_aux_key
from gdet.data import read_image, to_chw
from gdet.detection.crops import DEFAULT_CONTEXT_PAD, iter_region_chunks
from gdet.detection.labels import decode_boxes
from gdet.engine.checkpoint import load_checkpoint, load_model_weights
from gdet.engine.device import autocast
from gdet.ensemble import average_probabilities, common_classes
from gdet.errors import CheckpointError, GdetError
from gdet.nms import postprocess

MODES = ("rcnn", "shared")

__all__ = ["MODES", "DetectorOutput", "Detector", "EnsembleDetector", "build_detector", "load_detector",
           "load_detectors", "detector_checkpoint_meta", "image_to_tensor"]


class DetectorOutput(NamedTuple):
    """Output of :meth:`Detector.forward` on a batch of crops.

    logits (Tensor[N, C+1]); aux_logits (tuple of Tensor[N, C+1], training only); bbox_deltas (Tensor[N, C, 4] or
    None when the detector has no regression head).
    """

    logits: Tensor
    aux_logits: tuple[Tensor, ...]
    bbox_deltas: Tensor | None


class Detector(nn.Module):
    """R-CNN with a registry backbone.

    Args:
        backbone: a :class:`~gdet.backbones.Backbone` whose classifier is ``len(class_names) + 1``-way
            (index 0 = background; call ``backbone.reset_classifier(C + 1)`` on a classification backbone).
        class_names: the ``C`` object classes.
        context_pad: pixels of context around each proposal at the warped size (R-CNN: 16 at 227 px).
        input_size: warped crop side (default: the backbone's ``input_size``).
        bbox_reg: add a class-specific box regression head on the pooled features (R-CNN appendix C).
        sampling_ratio: ``roi_align`` samples per output pixel and axis (1 = bilinear resize, as R-CNN).
        chunk_size: regions per network call at inference (bounds memory).
        mode: ``rcnn`` (the paper's method: the whole network on each warped region) or ``shared`` (the trunk once
            per image, see :class:`~gdet.detection.shared.SharedDetectorNet`).
        shared: options of shared mode: ``scales``, ``max_size``, ``stage``, ``pooled_size``, ``pool_context`` (None:
            defaults).
    """

    def __init__(self, backbone: Backbone, class_names: Sequence[str], *, context_pad: int = DEFAULT_CONTEXT_PAD,
                 input_size: int | None = None, bbox_reg: bool = False, sampling_ratio: int = 1,
                 chunk_size: int = 256, mode: str = "rcnn", shared: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.class_names = list(class_names)
        if backbone.num_classes != len(self.class_names) + 1:
            raise ValueError(f"backbone has {backbone.num_classes} outputs; a detector for "
                             f"{len(self.class_names)} classes needs {len(self.class_names) + 1} (with background)")
        self.context_pad = int(context_pad)
        self.input_size = int(input_size or backbone.input_size)
        self.sampling_ratio = int(sampling_ratio)
        self.chunk_size = int(chunk_size)
        self.bbox_head = None
        if bbox_reg:
            self.bbox_head = nn.Linear(backbone.out_channels, 4 * len(self.class_names))
            nn.init.normal_(self.bbox_head.weight, std=0.001)
            nn.init.zeros_(self.bbox_head.bias)
        if mode not in MODES:
            raise GdetError(f"detector mode {mode!r}: use {' or '.join(MODES)}")
        self.mode = mode
        # Batch norm in eval mode while training (running statistics kept as loaded): the trainer's ``frozen_bn``
        # key, True (the whole backbone) or "trunk" (shared mode: the stages that run once per image, whose batch
        # statistics in training are one image's, while inference uses the running ones). Off by default in both
        # modes: from the synthetic classifier, frozen statistics stall fine-tuning (R-CNN's loss at step 300:
        # 1.05 frozen, 0.87 with batch statistics; shared mode stays at the class prior for 750 steps frozen).
        self.frozen_bn: bool | str = False
        # The proposal method and options of the proposals this detector was trained on (``{"method": "ss",
        # "max_side": 320, ...}``, from the training proposal file; None when unknown): the commands that detect
        # default to them, so that inference sees proposals made the way training saw them.
        self.proposals: dict | None = None
        if mode == "shared":
            if backbone.aux_logits:
                raise GdetError("shared mode: the backbone must have no aux heads (aux_logits: false); they sit "
                                "in the trunk, which runs once per image")
            self._attach_shared({k: v for k, v in (shared or {}).items() if v is not None})

    def _attach_shared(self, opts: dict, channels_last: bool = False, compile: bool = False,
                       cuda_graphs: bool = False) -> None:
        from gdet.detection.shared import SharedDetectorNet

        # Outside the module tree: it only re-uses the backbone's and box head's modules, so the state dict (and a
        # checkpoint) is the R-CNN one, and train()/eval()/to() on the detector reach it.
        opts = dict(opts)
        context_pad = self.context_pad if opts.pop("pool_context", False) else 0
        net = SharedDetectorNet.from_detector(self, sampling_ratio=self.sampling_ratio, chunk_size=self.chunk_size,
                                              context_pad=context_pad, **opts)
        net.channels_last = bool(channels_last)
        net.cuda_graphs = bool(cuda_graphs)
        if compile:
            net.forward_regions = torch.compile(net.forward_regions, dynamic=False)
        self.__dict__["shared_net"] = net

    def refresh_shared(self, channels_last: bool = False, compile: bool = False, cuda_graphs: bool = False) -> None:
        """Re-split the backbone for shared mode after its modules were replaced (the inference runtime folds and
        fuses them), keeping the settings; ``channels_last`` makes the trunk and head inputs NHWC, ``compile``
        runs the per-region head through ``torch.compile``, ``cuda_graphs`` replays the trunk and the head from
        CUDA graphs (on CUDA, at inference). No-op in rcnn mode."""
        if self.mode == "shared":
            self._attach_shared(self.shared_settings(), channels_last, compile, cuda_graphs)

    def train(self, mode: bool = True) -> "Detector":
        super().train(mode)
        if mode and self.frozen_bn:
            frozen = self.backbone
            if self.frozen_bn == "trunk":
                if self.mode != "shared":
                    raise GdetError("frozen_bn: trunk is for shared mode")
                frozen = self.shared_net.split.trunk  # holds the backbone's own modules up to the pooled stage
            for m in frozen.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def shared_settings(self) -> dict[str, Any] | None:
        """Shared mode's resolved options ``{"scales", "max_size", "stage", "pooled_size", "pool_context"}`` (None
        in rcnn mode)."""
        if self.mode != "shared":
            return None
        net = self.shared_net
        return {"scales": list(net.scales), "max_size": net.max_size, "stage": net.stage,
                "pooled_size": net.pooled_size, "pool_context": net.context_pad > 0}

    def describe_mode(self) -> str:
        """One line, e.g. ``shared (scales [600], max 1000, stage inception4e, pooled 14)``."""
        if self.mode != "shared":
            return "rcnn (warped crops, whole network per region)"
        s = self.shared_settings()
        return (f"shared (scales {s['scales']}, max {s['max_size']}, stage {s['stage']}, "
                f"pooled {s['pooled_size']}" + (f", context {self.shared_net.context_pad} px" if s["pool_context"] else "") + ")")

    @property
    def num_classes(self) -> int:
        """Object classes, without background."""
        return len(self.class_names)

    @property
    def bbox_reg(self) -> bool:
        return self.bbox_head is not None

    def forward(self, crops, boxes: Sequence[Tensor] | None = None) -> DetectorOutput:
        """Score regions.

        Args:
            crops: rcnn mode: Tensor[N, 3, S, S] normalised warped regions. Shared mode: the normalised images
                (Tensor[B, 3, H, W] or a list of Tensor[3, H_i, W_i]), with ``boxes``.
            boxes: shared mode only: ``B`` tensors Tensor[R_i, 4] (x1, y1, x2, y2) in pixels of each image.
        Returns:
            :class:`DetectorOutput` over the N (or ``sum R_i``) regions; aux logits only in rcnn mode, in
            training mode, when the backbone has aux heads.
        """
        if self.mode == "shared":
            if boxes is None:
                raise ValueError("a shared-mode detector is called with images and their boxes")
            return DetectorOutput(*self.shared_net(crops, boxes))
        bb = self.backbone
        aux: tuple[Tensor, ...] = ()
        if self.training and bb.aux_logits:
            feats, aux = bb._aux_forward(crops)  # N x 1024 x s x s, aux logits
        else:
            feats = bb.forward_features(crops)
        logits = bb.forward_head(feats)  # N x (C + 1)
        deltas = None
        if self.bbox_head is not None:
            pooled = torch.flatten(F.adaptive_avg_pool2d(feats, 1), 1)  # N x 1024
            deltas = self.bbox_head(pooled).view(-1, self.num_classes, 4)  # N x C x 4
        return DetectorOutput(logits, tuple(aux), deltas)

    def normalize(self, image01: Tensor) -> Tensor:
        """Tensor[3, H, W] float 0-1 RGB -> the network's normalised input (the mean pixel becomes 0)."""
        return self.backbone.normalize(image01[None].float())[0]

    def crop(self, image_norm: Tensor, boxes: Tensor):
        """Yield ``(slice, crops)`` chunks of warped regions of a normalised image (see :mod:`~gdet.detection.crops`)."""
        return iter_region_chunks(image_norm, boxes, self.input_size, self.context_pad, self.chunk_size,
                                  self.sampling_ratio)

    @torch.no_grad()
    def score_regions(self, image01: Tensor, boxes: Tensor, precision: str = "fp32",
                      channels_last: bool = False) -> tuple[Tensor, Tensor | None]:
        """Class probabilities (and box deltas) of regions of one image.

        Args:
            image01 (Tensor[3, H, W]): float RGB in 0-1 on the model's device.
            boxes (Tensor[N, 4]): proposals in pixels.
            precision: fp32, bf16 or fp16 for the network (crops are always computed in fp32).
        Returns:
            probs (Tensor[N, C+1]) float32 softmax, background first; deltas (Tensor[N, C, 4]) or None.
        """
        if self.mode == "shared":
            return self.shared_net.score_regions(image01, boxes, precision, channels_last)
        was_training = self.training
        self.eval()
        device = image01.device
        boxes = boxes.to(device=device, dtype=torch.float32)
        probs = torch.zeros((boxes.shape[0], self.num_classes + 1), device=device)
        deltas = torch.zeros((boxes.shape[0], self.num_classes, 4), device=device) if self.bbox_reg else None
        image_norm = self.normalize(image01)
        for sl, crops in self.crop(image_norm, boxes):
            if channels_last:
                crops = crops.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                out = self(crops)
            probs[sl] = F.softmax(out.logits.float(), dim=1)
            if deltas is not None:
                deltas[sl] = out.bbox_deltas.float()
        self.train(was_training)
        return probs, deltas

    def detect(self, image, proposals, **kwargs) -> dict[str, Tensor]:
        """Detect objects in one image; see :func:`detect_image` for the arguments."""
        return detect_image(self, image, proposals, **kwargs)


class EnsembleDetector:
    """Several detectors over the same classes: class probabilities (and box deltas) are averaged over the
    models on the same proposals, before NMS (the paper's 6-network ILSVRC 2014 detection ensemble).

    Each member crops with its own input size, context and normalisation, in its own mode (an rcnn and a
    shared-mode detector may be averaged).
    """

    def __init__(self, members: Sequence[Detector], sources: Sequence[str] | None = None):
        """``sources``: each member's weights file, named by the error when the classes differ."""
        sources = list(sources) if sources is not None else [f"detector {i + 1}" for i in range(len(members))]
        if len(sources) != len(members):
            raise GdetError(f"ensemble: {len(sources)} sources for {len(members)} detectors")
        self.class_names = common_classes([(s, m.class_names) for s, m in zip(sources, members)])
        self.members = list(members)
        self.proposals = self.members[0].proposals  # how the first member's training proposals were made

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @torch.no_grad()
    def score_regions(self, image01: Tensor, boxes: Tensor, precision: str = "fp32",
                      channels_last: bool = False) -> tuple[Tensor, Tensor | None]:
        """Averaged probabilities (Tensor[N, C+1]) and, when every member regresses boxes, averaged deltas."""
        outs = [m.score_regions(image01, boxes, precision, channels_last) for m in self.members]
        probs = average_probabilities([p for p, _ in outs])
        deltas = None
        if all(d is not None for _, d in outs):
            deltas = average_probabilities([d for _, d in outs])  # a plain mean of the deltas
        return probs, deltas

    def detect(self, image, proposals, **kwargs) -> dict[str, Tensor]:
        return detect_image(self, image, proposals, **kwargs)

    def describe_mode(self) -> str:
        """Each member's mode, e.g. ``1: rcnn (...); 2: shared (...)`` (members may differ)."""
        return "; ".join(f"{i}: {m.describe_mode()}" for i, m in enumerate(self.members, 1))

    def __len__(self) -> int:
        return len(self.members)


def image_to_tensor(image, device: torch.device | str = "cpu") -> Tensor:
    """A path, an RGB ``uint8 [H, W, 3]`` array or a ``Tensor[3, H, W]`` (uint8 or 0-1 float) as the detector's
    input: Tensor[3, H, W] float 0-1 on ``device``."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        image = to_chw(np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image[:, :, :3])
    if isinstance(image, Tensor):
        t = image.to(device)
        return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()
    raise TypeError(f"expected an image path, array or tensor, got {type(image).__name__}")


def detect_image(model: Detector | EnsembleDetector, image, proposals, *, score_thr: float = 0.05,
                 nms_thr: float = 0.3, max_dets: int = 100, soft_nms: str | None = None, max_proposals: int | None = None,
                 precision: str = "fp32", channels_last: bool = False, device: torch.device | str | None = None,
                 ) -> dict[str, Tensor]:
    """Run the detection pipeline on one image.

    Args:
        model: a :class:`Detector` or :class:`EnsembleDetector`.
        image: a path, an RGB ``uint8 [H, W, 3]`` array or a ``Tensor[3, H, W]``.
        proposals: Tensor[N, 4] boxes in pixels, best first (see :func:`gdet.detection.inference.resolve_proposals`).
        score_thr, nms_thr, max_dets, soft_nms: see :func:`gdet.nms.postprocess`.
        max_proposals: keep only the first (best-ranked) proposals.
        precision, channels_last: network numerics.
        device: where crops and the network run (default: the model's device).
    Returns:
        ``{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": Tensor[K]}`` on the CPU, labels in ``0..C-1``.
    """
    if device is None:
        first = model.members[0] if isinstance(model, EnsembleDetector) else model
        device = next(first.parameters()).device
    image01 = image_to_tensor(image, device)
    h, w = image01.shape[1:]
    boxes = torch.as_tensor(proposals, dtype=torch.float32).reshape(-1, 4)
    if max_proposals:
        boxes = boxes[:max_proposals]
    boxes = boxes.to(device)
    probs, deltas = model.score_regions(image01, boxes, precision, channels_last)
    det_boxes = boxes
    if deltas is not None:
        det_boxes = decode_boxes(boxes, deltas)  # N x C x 4
    if det_boxes.numel():
        det_boxes = torch.stack([det_boxes[..., 0].clamp(0, w), det_boxes[..., 1].clamp(0, h),
                                 det_boxes[..., 2].clamp(0, w), det_boxes[..., 3].clamp(0, h)], -1)
    out = postprocess(det_boxes, probs, score_thr=score_thr, nms_thr=nms_thr, max_dets=max_dets, soft=soft_nms)
    return {k: v.cpu() for k, v in out.items()}


def build_detector(backbone: str, class_names: Sequence[str], *, weights: str | os.PathLike | None = None,
                   backbone_kwargs: dict | None = None, context_pad: int = DEFAULT_CONTEXT_PAD,
                   input_size: int | None = None, bbox_reg: bool = False, sampling_ratio: int = 1,
                   chunk_size: int = 256, mode: str = "rcnn", shared: dict | None = None) -> Detector:
    """Build a detector from a registry backbone, optionally starting from a classification checkpoint.

    The classifier (and the aux classifiers) are replaced by fresh ``C + 1``-way layers; everything else comes
    from ``weights`` (a gdet classification checkpoint or a plain state dict), whose own classifier size does not
    matter.

    Args:
        backbone: registry name (``gdet models``).
        class_names: the ``C`` object classes.
        weights: classification checkpoint to start from (None: random initialisation).
        backbone_kwargs: extra builder arguments (e.g. ``{"aux_logits": True, "dropout": 0.4}``).
        mode, shared: see :class:`Detector`.
    """
    kw = dict(backbone_kwargs or {})
    num_cls = len(class_names) + 1
    if weights is not None:
        ckpt = load_checkpoint(weights)
        n_src = _classifier_size(ckpt["model"])
        net = build_backbone(backbone, num_classes=n_src or num_cls, **kw)
        # The checkpoint may have been trained with or without aux heads; load what fits, then report the rest.
        state = ckpt["model"]
        own = net.state_dict()
        missing = [k for k in own if k not in state and not is_aux_key(k)]
        if missing:
            raise CheckpointError(f"{weights}: weights do not fit backbone {backbone!r}: missing keys "
                                  f"({len(missing)}): {', '.join(missing[:5])}")
        load_model_weights(net, {k: v for k, v in state.items() if k in own}, strict=False)
        net.reset_classifier(num_cls)
    else:
        net = build_backbone(backbone, num_classes=num_cls, **kw)
    return Detector(net, class_names, context_pad=context_pad, input_size=input_size, bbox_reg=bbox_reg,
                    sampling_ratio=sampling_ratio, chunk_size=chunk_size, mode=mode, shared=shared)


def _classifier_size(state: dict[str, Tensor]) -> int | None:
    for key in ("fc.weight", "backbone.fc.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def detector_checkpoint_meta(model: Detector, backbone_kwargs: dict | None = None) -> dict[str, Any]:
    """The checkpoint keys (besides weights and training state) that :func:`load_detector` needs."""
    return {
        "task": "detect",
        "backbone": model.backbone.backbone_name,
        "backbone_kwargs": dict(backbone_kwargs or {}),
        "class_names": list(model.class_names),
        "preprocessing": model.backbone.preprocessing(),
        "detector": {"context_pad": model.context_pad, "input_size": model.input_size,
                     "bbox_reg": model.bbox_reg, "sampling_ratio": model.sampling_ratio, "mode": model.mode,
                     **({"shared": model.shared_settings()} if model.mode == "shared" else {}),
                     **({"proposals": dict(model.proposals)} if model.proposals else {})},
    }


def load_detector(path: str | os.PathLike, device: torch.device | str = "cpu", use_ema: bool = False,
                  chunk_size: int = 256, shared: dict | None = None, mode: str | None = None) -> Detector:
    """Load a detector written by ``gdet train det`` (or its fp16 export), in eval mode on ``device``.

    Aux heads are dropped (inference never uses them). The mode (``rcnn`` or ``shared``) is the checkpoint's
    (``rcnn`` for files that do not say) unless ``mode`` is given. A classification checkpoint or a foreign file
    raises a one-line :class:`~gdet.errors.CheckpointError`.

    Args:
        shared: shared-mode settings that replace the checkpoint's at inference, e.g. ``{"scales": [480, 600,
            750], "max_size": 1250}`` (a test-time pyramid); ignored when the detector runs in rcnn mode.
        mode: run the weights in this mode whatever the checkpoint was trained in (both modes use the same
            state dict): an rcnn-mode checkpoint in ``shared`` mode takes the checkpoint's shared settings if it
            has any, else the defaults, then ``shared``.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("task") != "detect" or "detector" not in ckpt:
        what = ckpt.get("task") or "not a gdet detector"
        raise CheckpointError(f"{path}: not a detection checkpoint ({what}); train one with gdet train det")
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    kw = dict(ckpt.get("backbone_kwargs") or {})
    kw["aux_logits"] = False
    meta = ckpt["detector"]
    names = list(ckpt["class_names"])
    saved_mode = meta.get("mode", "rcnn")
    if saved_mode not in MODES or not isinstance(meta.get("shared") or {}, dict):
        raise CheckpointError(f"{path}: unknown detector mode {saved_mode!r} (known: {', '.join(MODES)})")
    if mode is not None and mode not in MODES:
        raise GdetError(f"mode: {mode!r} is not a detector mode (use {' or '.join(MODES)})")
    proposals = meta.get("proposals")
    if proposals is not None and not (isinstance(proposals, dict) and isinstance(proposals.get("method"), str)):
        raise CheckpointError(f"{path}: malformed training proposal settings {proposals!r}")
    mode = mode or saved_mode
    net = build_backbone(ckpt["backbone"], num_classes=len(names) + 1, **kw)
    pre = ckpt.get("preprocessing")
    if pre:
        net.mean, net.std = tuple(pre["mean"]), tuple(pre["std"])
        net.input_scale = pre.get("input_scale", net.input_scale)
    try:
        model = Detector(net, names, context_pad=meta["context_pad"], input_size=meta["input_size"],
                         bbox_reg=meta.get("bbox_reg", False), sampling_ratio=meta.get("sampling_ratio", 1),
                         chunk_size=chunk_size, mode=mode,
                         shared={**(meta.get("shared") or {}), **(shared or {})} if mode == "shared" else None)
    except GdetError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:  # fp16 exports are cast to the model's fp32 on loading
        load_model_weights(model, {k: v for k, v in state.items() if not is_aux_key(k)})
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {str(e).removeprefix('state dict: ')}") from None
    model.proposals = dict(proposals) if proposals else None
    return model.to(device).eval()


def load_detectors(paths: Sequence[str | os.PathLike], device: torch.device | str = "cpu",
                   **kwargs) -> Detector | EnsembleDetector:
    """One detector, or an :class:`EnsembleDetector` when several paths are given."""
    models = [load_detector(p, device, **kwargs) for p in paths]
    return models[0] if len(models) == 1 else EnsembleDetector(models, [str(p) for p in paths])


def export_detector(src: str | os.PathLike, dst: str | os.PathLike, half: bool = True, use_ema: bool = False) -> int:
    """Write an inference-only copy of a detection training checkpoint (fp16, no aux heads, no optimizer state);
    see :func:`gdet.export.checkpoint.export_checkpoint`. Returns the file size in bytes."""
    from gdet.export.checkpoint import export_checkpoint

    if load_checkpoint(src).get("task") != "detect":
        raise CheckpointError(f"{src}: not a detection checkpoint")
    return export_checkpoint(src, dst, use_ema=use_ema, half=half)
