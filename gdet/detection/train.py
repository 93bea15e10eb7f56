"""Detector fine-tuning (R-CNN, or the shared-feature mode of :mod:`gdet.detection.shared`) as a
:class:`~gdet.engine.Task` for gdet's one training loop, and the val evaluation (:func:`evaluate_detector`, over
:func:`gdet.detection.inference.detect_records`).

``tools/train_det.py`` is a thin wrapper over :func:`train`. Every config key is listed in :data:`DEFAULTS`
and documented in ``README.md (detection section)``.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gdet.backbones import BackboneOutput, list_backbones
from gdet.config import complete_config, interval, mapping, number, one_of
from gdet.data.image import read_image
from gdet.detection.crops import crop_regions
from gdet.detection.inference import training_proposals
from gdet.detection.labels import RegionLabels, encode_boxes, label_regions
from gdet.detection.model import MODES, Detector, build_detector, detector_checkpoint_meta, load_detectors
from gdet.detection.sampler import RegionSampler
from gdet.detection.shared import mix_distillation, shared_loss
from gdet.detection.visualize import draw_detections
from gdet.engine.trainer import ENGINE_CHECKS, ENGINE_DEFAULTS, Run, Task, backbone_kwargs_check, fit, input_size_check
from gdet.errors import CheckpointError, ConfigError, GdetError
from gdet.evaluation import build_evaluator, plot_pr_curves
from gdet.runtime import optimize
from gdet.structures import ImageRecord

__all__ = ["CHECKS", "DEFAULTS", "DetectionTask", "RegionBatches", "evaluate_detector", "load_proposal_set",
           "prepare_regions", "train"]

DEFAULTS: dict[str, Any] = {
    **copy.deepcopy(ENGINE_DEFAULTS),
    # data
    "data": None,                 # dataset root (VOC folder / folder of <split>.json) or a COCO .json
    "train_split": "train",
    "val_split": "val",
    "proposals": "ss",            # a proposal method (computed once, cached in work_dir/) or a .npz proposal file
    "val_proposals": None,        # proposal file for the val split (default: like `proposals`)
    "proposal_kwargs": {},        # options of the proposal method
    "proposal_workers": 0,        # processes computing proposals
    "max_proposals": 2000,        # proposals kept per image (best ranked first)
    # model
    "mode": "rcnn",               # rcnn: whole network per warped region (the paper); shared: trunk once per image
    "scales": [600],              # shared: shorter image side(s) the trunk runs at (one drawn per training image)
    "train_pyramid": False,       # shared: train on every scale, each region from its nearest (as inference does)
    "max_size": 1000,             # shared: cap on the longer side
    "stage": None,                # shared: the feature_info stage regions are pooled from (null: deepest stride 16)
    "pooled_size": None,          # shared: pooled region side (null: the stage's size at input_size)
    "pool_context": False,        # shared: pool each proposal with R-CNN's context (context_pad at input_size)
    "frozen_bn": None,            # true: batch norm in eval mode while training (running statistics kept as
                                  # loaded); trunk (shared): only the trunk's; null or false: batch statistics
    "backbone": "googlenet",
    "backbone_kwargs": {},
    "weights": None,              # classification or detector checkpoint to start from (null: from scratch)
    "input_size": 224,            # warped crop side
    "context_pad": 16,            # context pixels at the warped size (R-CNN: 16)
    "sampling_ratio": 1,          # roi_align samples per pixel (1 = bilinear warp, as R-CNN)
    "aux_logits": True,           # train with the aux heads (weighted aux_weight)
    "aux_weight": 0.3,
    "bbox_reg": False,            # class-specific box regression head (R-CNN appendix C)
    "bbox_iou": 0.6,              # regression trained on proposals with IoU > this
    "bbox_loss_weight": 1.0,
    "distill": None,              # detector file(s) whose class probabilities teach every region (null: none)
    "distill_weight": 0.5,        # classification loss: (1 - this) x cross-entropy + this x distillation
    "distill_temperature": 2.0,   # softens both distributions
    # regions and batches
    "fg_iou": 0.5,
    "bg_iou_lo": 0.0,
    "batch_size": 128,            # regions per process per step (DDP: the global batch is this x processes)
    "fg_fraction": 0.25,          # 32 of 128
    "images_per_batch": 2,        # shared: images per process per step, batch_size / images_per_batch regions each
    "iters_per_epoch": None,      # null: ceil(#foreground regions / foreground per global batch)
    "hflip": 0.5,                 # probability of a horizontal flip of each crop (shared: of each image)
    "cache_images": True,         # keep decoded training images in memory
    "workers": 0,                 # DataLoader workers decoding images
    # optimisation (gdet.engine.optim keys)
    "epochs": 2,
    "lr": 0.001,
    "weight_decay": 5e-4,
    "lr_gamma": 0.1,
    "ema_decay": 0.0,
    # evaluation
    "eval_every": 1,              # epochs between val mAP evaluations (0: never)
    "eval_max_images": None,      # evaluate on the first N val images (null: all)
    "eval_max_proposals": None,   # proposals per val image (null: max_proposals)
    "eval_score_thr": 0.001,
    "nms_iou": 0.3,               # per-class NMS of the detections
    "eval_max_dets": 100,
    # output
    "work_dir": "runs/det",
    "log_every": 10,
    "export_fp16": True,          # also write work_dir/detector_fp16.pth (inference-only, no aux heads)
}


def _mode_check(v: Any, cfg: dict) -> str | None:
    problem = one_of(*MODES)(v, cfg)
    if problem is None and v == "shared" and cfg.get("aux_logits"):
        return "shared mode needs aux_logits: false (the aux heads sit in the trunk, which runs once per image)"
    return problem


def _bg_iou_check(v: Any, cfg: dict) -> str | None:
    problem = interval(0, 1, hi_open=True)(v, cfg)
    fg = cfg.get("fg_iou")
    if problem is None and isinstance(fg, (int, float)) and v >= fg:
        problem = f"must be below fg_iou ({fg}): background regions have an IoU in [bg_iou_lo, fg_iou), got {v!r}"
    return problem


def _scales_check(v: Any, cfg: dict) -> str | None:
    ok = isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                                     for x in v)
    if not ok:
        return f"must be a list of positive image sides such as [600], got {v!r}"
    cap = cfg.get("max_size")
    if cfg.get("mode") == "shared" and isinstance(cap, int) and not isinstance(cap, bool) and max(v) > cap:
        return (f"{max(v)} is above max_size {cap}, so no image is rescaled to it; raise max_size or drop the "
                f"scale")
    return None


def _images_per_batch_check(v: Any, cfg: dict) -> str | None:
    problem = number(ge=1, integer=True)(v, cfg)
    if problem is None and isinstance(cfg.get("batch_size"), int) and v > cfg["batch_size"]:
        return f"must be at most batch_size ({cfg['batch_size']} regions shared out over the images), got {v}"
    return problem


def _distill_check(v: Any, cfg: dict) -> str | None:
    paths = [v] if isinstance(v, str) else v
    if v is None or (isinstance(paths, list) and paths and all(isinstance(p, str) and p for p in paths)):
        return None
    return f"must be a detector file, a list of them (an ensemble teaches) or null, got {v!r}"


def _frozen_bn_check(v, cfg) -> str | None:
    if v is None or isinstance(v, bool):
        return None
    if v == "trunk":
        return None if cfg.get("mode") == "shared" else "trunk is for mode: shared (the stages up to the pooled one)"
    return f"must be true, false or trunk, got {v!r}"


CHECKS = {
    **ENGINE_CHECKS,
    "mode": _mode_check,
    "scales": _scales_check,
    "max_size": number(ge=1, integer=True, null=True),
    "stage": lambda v, cfg: None if v is None or isinstance(v, str) else f"must be a stage name or null, got {v!r}",
    "pooled_size": number(ge=1, integer=True, null=True),
    "frozen_bn": _frozen_bn_check,
    "train_pyramid": lambda v, cfg: None if isinstance(v, bool) else f"must be true or false, got {v!r}",
    "pool_context": lambda v, cfg: None if isinstance(v, bool) else f"must be true or false, got {v!r}",
    "images_per_batch": _images_per_batch_check,
    "proposal_kwargs": mapping,
    "proposal_workers": number(ge=0, integer=True),
    "max_proposals": number(ge=1, integer=True),
    "backbone": one_of(*list_backbones()),
    "backbone_kwargs": backbone_kwargs_check(),
    "input_size": input_size_check(),
    "context_pad": number(ge=0),
    "sampling_ratio": number(ge=0, integer=True),
    "aux_weight": number(ge=0),
    "bbox_iou": interval(0, 1, lo_open=True),
    "bbox_loss_weight": number(ge=0),
    "distill": _distill_check,
    "distill_weight": interval(0, 1),
    "distill_temperature": number(gt=0),
    "fg_iou": interval(0, 1, lo_open=True),
    "bg_iou_lo": _bg_iou_check,
    "fg_fraction": interval(0, 1, lo_open=True),
    "iters_per_epoch": number(ge=1, integer=True, null=True),
    "hflip": interval(0, 1),
    "eval_max_images": number(ge=1, integer=True, null=True),
    "eval_max_proposals": number(ge=1, integer=True, null=True),
    "eval_score_thr": interval(0, 1),
    "nms_iou": interval(0, 1, lo_open=True),
    "eval_max_dets": number(ge=1, integer=True),
}


def load_proposal_set(spec: str, records: Sequence[ImageRecord], out_dir: Path, split: str,
                      method_kwargs: dict | None = None, workers: int = 0, distributed: bool = False):
    """A :class:`~gdet.proposals.ProposalSet` for ``records``: read from a ``.npz`` file, or computed with the
    named method and cached as ``out_dir/proposals_<method>_<split>.npz`` (resumable). With ``distributed``
    (every rank calls it) the images are shared out over the ranks and rank 0 writes the file."""
    from gdet.proposals import list_proposers, load_proposals
    from gdet.proposals.compute import compute_proposals

    if str(spec).endswith(".npz"):
        props = load_proposals(spec)
    elif spec in list_proposers():
        path = Path(out_dir) / f"proposals_{spec}_{split}.npz"
        compute_proposals([(r.image_id, r.path) for r in records], spec, path, method_kwargs=method_kwargs,
                          workers=workers, meta={"split": split}, distributed=distributed,
                          options_label="proposal_kwargs.")
        props = load_proposals(path)
    else:
        raise ConfigError(f"proposals {spec!r}: neither a .npz proposal file nor a method "
                          f"({', '.join(list_proposers())})")
    missing = [r.image_id for r in records if r.image_id not in props]
    if missing:
        raise GdetError(f"{spec}: no proposals for {len(missing)} image(s) of split {split!r}, e.g. {missing[0]!r}")
    return props


def prepare_regions(records: Sequence[ImageRecord], proposals, *, max_proposals: int | None = 2000,
                    fg_iou: float = 0.5, bg_iou_lo: float = 0.0, bbox_iou: float = 0.6,
                    ) -> tuple[list[RegionLabels], list[tuple[Tensor, Tensor]]]:
    """Label the proposals of every image, and compute box-regression targets.

    Returns:
        regions: one :class:`RegionLabels` per image.
        bbox: per image ``(targets Tensor[R, 4], use Tensor[R] bool)``: ``use`` marks foreground regions with
            IoU > ``bbox_iou`` (R-CNN trains its regressors on those only).
    """
    regions, bbox = [], []
    for rec in records:
        boxes, _ = proposals[rec.image_id]
        if max_proposals:
            boxes = boxes[:max_proposals]
        r = label_regions(boxes, rec.boxes, rec.labels, rec.ignore, fg_iou=fg_iou, bg_iou_lo=bg_iou_lo)
        use = (r.labels > 0) & (r.iou > bbox_iou)
        targets = torch.zeros((len(r), 4))
        if use.any():
            targets[use] = encode_boxes(r.boxes[use], rec.boxes[r.gt_index[use]])
        regions.append(r)
        bbox.append((targets, use))
    return regions, bbox


class RegionBatches(Dataset):
    """Item ``k`` = this rank's share of mini-batch ``k``: the images it touches and its regions.

    Items are dicts ``{"images": [uint8 Tensor[3, H, W]], "image_of": Tensor[B], "boxes": Tensor[B, 4],
    "labels": Tensor[B], "bbox_targets": Tensor[B, 4], "bbox_use": Tensor[B]}``. Crops are cut later on the
    training device (:func:`crop_batch`), so the host only decodes images.
    """

    def __init__(self, records: Sequence[ImageRecord], regions: list[RegionLabels], bbox: list, batches: list[Tensor],
                 cache: dict | None = None):
        self.records, self.regions, self.bbox, self.batches = records, regions, bbox, batches
        self.cache = cache  # image index -> decoded uint8 image, or None for no caching

    def __len__(self) -> int:
        return len(self.batches)

    def _image(self, i: int) -> Tensor:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        from gdet.data import read_image

        img = torch.from_numpy(np.array(read_image(self.records[i].path))).permute(2, 0, 1).contiguous()
        if self.cache is not None:
            self.cache[i] = img
        return img

    def __getitem__(self, k: int) -> dict[str, Any]:
        b = self.batches[k]
        uniq = sorted(set(b[:, 0].tolist()))
        pos = {i: n for n, i in enumerate(uniq)}
        boxes = torch.stack([self.regions[i].boxes[j] for i, j in b.tolist()]) if len(b) else torch.zeros((0, 4))
        return {
            "images": [self._image(i) for i in uniq],
            "image_of": torch.tensor([pos[i] for i in b[:, 0].tolist()], dtype=torch.int64),
            "boxes": boxes,
            "labels": torch.stack([self.regions[i].labels[j] for i, j in b.tolist()]),
            "bbox_targets": torch.stack([self.bbox[i][0][j] for i, j in b.tolist()]),
            "bbox_use": torch.stack([self.bbox[i][1][j] for i, j in b.tolist()]),
        }


class ImageBatches(Dataset):
    """Item ``k`` = this rank's images of image-centric mini-batch ``k`` (shared mode):
    ``{"index": [int], "images": [uint8 Tensor[3, H, W]], "step": int}`` (``step`` counts over the whole run)."""

    def __init__(self, records: Sequence[ImageRecord], batches: list[list[int]], first_step: int,
                 cache: dict | None = None):
        self.records, self.batches, self.first_step = records, batches, first_step
        self.cache = cache

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict[str, Any]:
        images = []
        for i in self.batches[k]:
            img = self.cache.get(i) if self.cache is not None else None
            if img is None:
                from gdet.data import read_image

                img = torch.from_numpy(np.array(read_image(self.records[i].path))).permute(2, 0, 1).contiguous()
                if self.cache is not None:
                    self.cache[i] = img
            images.append(img)
        return {"index": list(self.batches[k]), "images": images, "step": self.first_step + k}


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes (Tensor[N, 4], x1 y1 x2 y2 in pixels) of an image of ``width`` pixels, mirrored left-right."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)


def crop_batch(model: Detector, batch: dict[str, Any], device: torch.device, hflip: float = 0.0,
               channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """Warp a batch's regions on ``device`` and flip each with probability ``hflip``. Returns crops
    (Tensor[B, 3, S, S]) in batch order and the flip mask (Tensor[B] bool)."""
    n = batch["boxes"].shape[0]
    crops = torch.empty((n, 3, model.input_size, model.input_size), device=device)
    image_of = batch["image_of"].to(device)
    boxes = batch["boxes"].to(device)
    for k, img in enumerate(batch["images"]):
        sel = torch.nonzero(image_of == k).flatten()
        img01 = img.to(device, non_blocking=True).float().div_(255.0)
        crops[sel] = crop_regions(model.normalize(img01), boxes[sel], model.input_size, model.context_pad,
                                  model.sampling_ratio)
    flipped = torch.zeros(n, dtype=torch.bool, device=device)
    if hflip > 0:
        flipped = torch.rand(n).to(device) < hflip
        crops = torch.where(flipped[:, None, None, None], crops.flip(-1), crops)
    if channels_last:
        crops = crops.contiguous(memory_format=torch.channels_last)
    return crops, flipped


def detection_loss(out, labels: Tensor, bbox_targets: Tensor, bbox_use: Tensor, flipped: Tensor,
                   aux_weight: float = 0.3, bbox_weight: float = 1.0) -> dict[str, Tensor]:
    """The R-CNN losses of a batch of B regions.

    Returns:
        ``{"loss_cls"}``: cross-entropy over C + 1 classes (+ ``aux_weight`` x each aux head's), and with a
        box head ``"loss_bbox"``: ``bbox_weight`` x smooth-L1 on the regions marked ``bbox_use`` (its x offset
        negated for flipped crops), summed and divided by B.
    """
    from gdet.engine.loop import compute_loss

    output = BackboneOutput(out.logits, out.aux_logits) if out.aux_logits else out.logits
    cls_loss, _ = compute_loss(output, labels, F.cross_entropy, aux_weight)
    losses = {"loss_cls": cls_loss}
    if out.bbox_deltas is not None:
        idx = torch.nonzero(bbox_use).flatten()
        if idx.numel():
            t = bbox_targets[idx].clone()
            t[:, 0] = torch.where(flipped[idx], -t[:, 0], t[:, 0])
            pred = out.bbox_deltas[idx, labels[idx] - 1].float()
            box_loss = F.smooth_l1_loss(pred, t, beta=1.0 / 9, reduction="sum") / max(labels.numel(), 1)
        else:
            box_loss = out.bbox_deltas.sum() * 0.0  # keeps every parameter in the graph (DDP)
        losses["loss_bbox"] = bbox_weight * box_loss
    return losses


def evaluate_detector(model, records: Sequence[ImageRecord], class_names: Sequence[str], proposals, *,
                      device: torch.device, score_thr: float = 0.001, nms_thr: float = 0.3, max_dets: int = 100,
                      max_proposals: int | None = None, precision: str = "fp32") -> tuple[dict, list[dict]]:
    """Val mAP through gdet's evaluators (VOC 2010+, VOC 2007 11-point, COCO), images split over DDP ranks.

    Returns:
        ``({"voc_mAP", "voc07_mAP", "coco_AP", "coco_AP50", "per_class"}, detections per image)``.
    """
    import torch.distributed as dist

    from gdet.detection.inference import detect_records
    from gdet.engine import all_gather_objects
    from gdet.evaluation.coco import COCOEvaluator
    from gdet.evaluation.voc import VOCEvaluator

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = detect_records(model, records, proposals, device=device, score_thr=score_thr, nms_iou=nms_thr,
                          max_dets=max_dets, max_proposals=max_proposals, precision=precision, rank=rank,
                          world_size=world, desc="val", leave=False)
    # Rank r detected records r, r + world, ...: interleave the gathered lists back into record order.
    parts = all_gather_objects(mine)
    dets = [parts[i % world][i // world] for i in range(len(records))]
    res: dict[str, Any] = {}
    evals = {"voc": VOCEvaluator(class_names, metric="voc"), "voc07": VOCEvaluator(class_names, metric="voc07"),
             "coco": COCOEvaluator(class_names)}
    for name, ev in evals.items():
        ev.reset()
        ev.process(list(records), dets)
        r = ev.evaluate()
        if name == "coco":
            res["coco_AP"] = r["summary"]["AP"]
            res["coco_AP50"] = r["summary"]["AP50"]
        else:
            res[f"{name}_mAP"] = r["mAP"]
            if name == "voc":
                res["per_class"] = {row["class"]: row["ap"] for row in r["per_class"]}
    return res, dets


def _read_split(cfg: dict, split: str):
    from gdet.data import load_detection_set

    return load_detection_set(cfg["data"], split=split)


class DetectionTask(Task):
    """Detector fine-tuning; the best epoch is the one with the best val VOC mAP (of the averaged weights when
    averaging is on).

    ``mode: rcnn``: batches of ``batch_size`` warped regions per process drawn over all images (``fg_fraction``
    foreground), cross-entropy over C + 1 classes (+ aux heads, + box regression). ``mode: shared``: Fast R-CNN's
    image-centric batches, ``images_per_batch`` images per process (each flipped with probability ``hflip``,
    boxes and proposals with it) and ``batch_size / images_per_batch`` regions of each
    (:func:`~gdet.detection.shared.shared_loss`, same labelling and sampler), the trunk run once per image."""

    name = "detect"
    score_name = "val_voc_mAP"
    unit = "regions"
    hidden = ("val_per_class_ap",)
    loss_keys = ("mode", "aux_logits", "aux_weight", "bbox_reg", "bbox_loss_weight", "bbox_iou", "fg_iou", "bg_iou_lo",
                 "fg_fraction", "distill", "distill_weight", "distill_temperature")

    def title(self) -> str:
        return "R-CNN fine-tuning" if self.cfg["mode"] == "rcnn" else "shared-feature (Fast R-CNN style) fine-tuning"

    def setup(self, run: Run) -> nn.Module:
        from gdet.engine import is_main_process

        cfg, info, work = self.cfg, run.info, run.work_dir
        self.run_info = info
        self.train_set = _read_split(cfg, cfg["train_split"])
        self.val_set = _read_split(cfg, cfg["val_split"]) if cfg["eval_every"] and cfg["val_split"] else None
        class_names = self.train_set.class_names
        ck = run.resume_ckpt
        if ck is not None and ck.get("class_names") and list(ck["class_names"]) != list(class_names):
            raise ConfigError(f"{cfg['resume']}: its classes differ from those of {cfg['data']}; resuming would "
                              "permute the labels")
        self.teacher = self._load_teacher(cfg, class_names, run.device)  # before proposals, which may take long
        # Proposals: every rank computes its share of the images; rank 0 writes (and caches) the file.
        props = load_proposal_set(cfg["proposals"], self.train_set.records, work, cfg["train_split"],
                                  cfg["proposal_kwargs"], cfg["proposal_workers"], distributed=True)
        self.regions, self.bbox = prepare_regions(self.train_set.records, props, max_proposals=cfg["max_proposals"],
                                                  fg_iou=cfg["fg_iou"], bg_iou_lo=cfg["bg_iou_lo"],
                                                  bbox_iou=cfg["bbox_iou"])
        # One global batch of batch_size x processes regions per step, each rank taking its share.
        self.sampler = RegionSampler(self.regions, int(cfg["batch_size"]) * info.world_size,
                                     float(cfg["fg_fraction"]), seed=int(cfg["seed"]))
        self.mode = cfg["mode"]
        shared = None
        if self.mode == "shared":
            self.props = props
            # Images with a region to train on (a labelled proposal or a ground-truth box).
            self.images = [i for i, r in enumerate(self.regions) if bool((r.labels >= 0).any())]
            if not self.images:
                raise GdetError(f"{cfg['data']}: no training image has a region to train on")
            self.images_per_batch = int(cfg["images_per_batch"])
            per_step = self.images_per_batch * info.world_size
            self.iters = int(cfg["iters_per_epoch"] or -(-len(self.images) // per_step))
            shared = {k: cfg[k] for k in ("scales", "max_size", "stage", "pooled_size", "pool_context")}
        else:
            self.iters = int(cfg["iters_per_epoch"] or self.sampler.batches_per_epoch())
        bb_kwargs = {**dict(cfg["backbone_kwargs"] or {}), "aux_logits": bool(cfg["aux_logits"])}
        try:
            model = build_detector(cfg["backbone"], class_names, backbone_kwargs=bb_kwargs,
                                   context_pad=cfg["context_pad"], input_size=cfg["input_size"],
                                   bbox_reg=cfg["bbox_reg"], sampling_ratio=cfg["sampling_ratio"], mode=self.mode,
                                   shared=shared)
        except GdetError as e:
            key = next((k for k in ("stage", "context_pad") if k in str(e)), "mode")
            raise ConfigError(f"{key}: {e}") from None
        if cfg["weights"] and ck is None:  # a resumed run's weights all come from its checkpoint
            self._load_start_weights(model, cfg["weights"], class_names, bool(cfg["weights_strict"]))
        model.frozen_bn = "trunk" if cfg["frozen_bn"] == "trunk" else bool(cfg["frozen_bn"])
        if self.mode == "shared":
            model.shared_net.train_pyramid = bool(cfg["train_pyramid"])
        model.proposals = training_proposals(props)  # gdet detect and gdet test default to them
        self.meta = detector_checkpoint_meta(model, bb_kwargs)
        self.class_names = class_names
        # Shared over epochs in this process (with workers, each worker process fills its own copy).
        self.image_cache: dict[int, Tensor] | None = {} if cfg["cache_images"] else None
        self.hflip = float(cfg["hflip"])
        self.aux_weight, self.bbox_weight = float(cfg["aux_weight"]), float(cfg["bbox_loss_weight"])
        self.workers, self.pin = int(cfg["workers"]), run.device.type == "cuda"
        self.val_records = self.val_props = None
        if is_main_process():
            if self.mode == "shared":
                batch = (f"{self.images_per_batch} images x {int(cfg['batch_size']) // self.images_per_batch} "
                         f"regions per process, {model.describe_mode()}")
                if len(cfg["scales"]) > 1:
                    batch += ", every scale" if cfg["train_pyramid"] else ", one random scale per image"
            else:
                batch = f"{cfg['batch_size']} regions per process"
            cap = cfg.get("max_steps_per_epoch")
            iters = f"{min(self.iters, cap)} (of {self.iters}: max_steps_per_epoch)" if cap and cap < self.iters \
                else self.iters
            print(f"train: {len(self.train_set)} images, {self.sampler.num_fg} foreground / {self.sampler.num_bg} "
                  f"background regions, {iters} iterations of {batch} per epoch, device {run.device}"
                  + (f", {info.world_size} processes" if info.distributed else ""), flush=True)
            if self.teacher is not None:
                print(f"distill: taught by {self.teacher.describe_mode()} (weight {cfg['distill_weight']}, "
                      f"temperature {cfg['distill_temperature']})", flush=True)
        return model

    def steps_per_epoch(self) -> int:
        return self.iters

    def _image_batches(self, epoch: int) -> list[list[int]]:
        """This rank's images of each step of ``epoch``: a fresh permutation of the training images per epoch
        (a function of the seed and the epoch only, so a resumed run draws the same), walked with wrap-around,
        ``images_per_batch x processes`` per step, every ``world_size``-th one to this rank."""
        info = self.run_info
        g = torch.Generator().manual_seed(int(self.cfg["seed"]) * 1_000_003 + int(epoch))
        perm = torch.tensor(self.images)[torch.randperm(len(self.images), generator=g)]
        per_step = self.images_per_batch * info.world_size
        out = []
        for k in range(self.iters):
            pos = (k * per_step + torch.arange(per_step)) % perm.numel()
            out.append(perm[pos][info.rank::info.world_size].tolist())
        return out

    def train_batches(self, epoch: int):
        info = self.run_info
        if self.mode == "shared":
            data = ImageBatches(self.train_set.records, self._image_batches(epoch), epoch * self.iters,
                                cache=self.image_cache)
            return DataLoader(data, batch_size=None, shuffle=False, num_workers=self.workers, pin_memory=self.pin)
        batches = [RegionSampler.shard(b, info.rank, info.world_size) for b in self.sampler.epoch(epoch, self.iters)]
        data = RegionBatches(self.train_set.records, self.regions, self.bbox, batches, cache=self.image_cache)
        return DataLoader(data, batch_size=None, shuffle=False, num_workers=self.workers, pin_memory=self.pin)

    @staticmethod
    def _load_start_weights(model: Detector, path: str, class_names: Sequence[str], strict: bool) -> None:
        """A classification checkpoint starts the backbone (classifier re-initialised, as R-CNN does). A detector
        starts it too, of either mode (e.g. an R-CNN detector fine-tuned into shared mode): with the same classes
        its classifier and box head are kept, otherwise re-initialised."""
        from gdet.engine import load_checkpoint, load_start_weights

        src = load_checkpoint(path)
        same = src.get("task") == "detect" and list(src.get("class_names") or []) == list(class_names)
        load_start_weights(model.backbone, path, strict=strict, reinit_head=not same, ckpt=src)
        head = {k[len("bbox_head."):]: v for k, v in src["model"].items() if k.startswith("bbox_head.")}
        if same and model.bbox_head is not None and head:
            if {k: tuple(v.shape) for k, v in head.items()} != {k: tuple(v.shape) for k, v in
                                                                 model.bbox_head.state_dict().items()}:
                raise CheckpointError(f"{path}: its box head does not fit this detector's")
            model.bbox_head.load_state_dict(head)
            print(f"weights: box head loaded from {path}")

    @staticmethod
    def _load_teacher(cfg: dict, class_names: Sequence[str], device: torch.device):
        """The ``distill`` detector (an ensemble for several files), in eval mode on ``device``, or None."""
        if not cfg["distill"]:
            return None
        paths = [cfg["distill"]] if isinstance(cfg["distill"], str) else list(cfg["distill"])
        teacher = load_detectors(paths, device)
        if list(teacher.class_names) != list(class_names):
            raise ConfigError(f"distill: {paths[0]}: its classes ({', '.join(teacher.class_names)}) differ from "
                              f"those of {cfg['data']} ({', '.join(class_names)})")
        return teacher

    def _teach(self, image01: Tensor, boxes: Tensor, run: Run) -> Tensor:
        """The teacher's class probabilities (Tensor[R, C+1]) of regions of one image (float RGB 0-1)."""
        with torch.autocast(run.device.type, enabled=False):  # the teacher applies the run's precision itself
            return self.teacher.score_regions(image01, boxes, run.precision, run.channels_last)[0]

    def _distill(self, cls_loss: Tensor, logits: Tensor, probs: Tensor) -> dict[str, Tensor]:
        """The classification loss split into its weighted cross-entropy and distillation parts."""
        ce, kd = mix_distillation(cls_loss, logits, probs, float(self.cfg["distill_weight"]),
                                  float(self.cfg["distill_temperature"]))
        return {"loss_cls": ce, "loss_distill": kd}

    def shared_loss(self, net: nn.Module, batch, run: Run) -> dict[str, Tensor]:
        """Loss of an image-centric batch (shared mode)."""
        cfg, model, dev = self.cfg, run.model, run.device
        images, images01, targets, proposals = [], [], [], []
        for i, img in zip(batch["index"], batch["images"]):
            rec = self.train_set.records[i]
            img01 = img.to(dev, non_blocking=True).float().div_(255.0)  # 3 x H x W
            props = self.props[rec.image_id][0]
            props = props[:cfg["max_proposals"]] if cfg["max_proposals"] else props
            gt = rec.boxes.float().reshape(-1, 4)
            if self.hflip > 0 and float(torch.rand(())) < self.hflip:  # image, boxes and proposals together
                w = img01.shape[-1]
                img01, gt, props = img01.flip(-1), flip_boxes(gt, w), flip_boxes(props.float(), w)
            with torch.autocast(dev.type, enabled=False):
                x = model.normalize(img01)
            images.append(x)
            images01.append(img01)
            targets.append({"boxes": gt, "labels": rec.labels, "ignore": rec.ignore})
            proposals.append(props)
        model.shared_net.channels_last = run.channels_last
        res = shared_loss(net, images, targets, proposals,
                          regions_per_image=int(cfg["batch_size"]) // self.images_per_batch,
                          fg_fraction=float(cfg["fg_fraction"]), fg_iou=float(cfg["fg_iou"]),
                          bg_iou_lo=float(cfg["bg_iou_lo"]), bbox_iou=float(cfg["bbox_iou"]),
                          bbox_weight=self.bbox_weight,
                          seed=int(cfg["seed"]) * 1_000_003 + int(batch["step"]),
                          teacher=(lambda k, boxes: self._teach(images01[k], boxes, run)) if self.teacher else None,
                          distill_weight=float(cfg["distill_weight"]),
                          distill_temperature=float(cfg["distill_temperature"]))
        self._regions = int(res["num_regions"])
        # The engine sums the "loss*" entries: the gradient rides on loss_cls (the total less the detached
        # distillation and box terms), so that the logged parts are the R-CNN mode's (weighted) ones.
        total = res["loss"]
        out = {"loss_cls": total}
        if "loss_distill" in res:
            out["loss_distill"] = res["loss_distill"]
        if "loss_bbox" in res:
            out["loss_bbox"] = self.bbox_weight * res["loss_bbox"]
        out["loss_cls"] = total - sum(v for k, v in out.items() if k != "loss_cls")
        out["acc"] = res["acc"].double()
        out["fg_share"] = res["num_fg"].double() / max(self._regions, 1)
        return out

    def loss(self, net: nn.Module, batch, run: Run) -> dict[str, Tensor]:
        if self.mode == "shared":
            return self.shared_loss(net, batch, run)
        with torch.autocast(run.device.type, enabled=False):  # the warp stays in fp32
            crops, flipped = crop_batch(run.model, batch, run.device, self.hflip, run.channels_last)
        labels = batch["labels"].to(run.device)
        out = net(crops)
        losses = detection_loss(out, labels, batch["bbox_targets"].to(run.device), batch["bbox_use"].to(run.device),
                                flipped, self.aux_weight, self.bbox_weight)
        if self.teacher is not None:
            losses.update(self._distill(losses["loss_cls"], out.logits, self._teach_crops(batch, flipped, run)))
        with torch.no_grad():
            pred = out.logits.argmax(1)
            fg = labels > 0
            losses["acc"] = (pred == labels).double().mean()
            losses["fg_acc"] = (pred[fg] == labels[fg]).double().sum() / fg.sum().clamp(min=1)
        return losses

    @torch.no_grad()
    def _teach_crops(self, batch, flipped: Tensor, run: Run) -> Tensor:
        """The teacher's probabilities of an R-CNN batch's regions, each in its image as the crop was (flipped
        or not)."""
        dev = run.device
        probs = torch.empty((batch["boxes"].shape[0], len(self.class_names) + 1), device=dev)
        image_of, boxes, flipped = batch["image_of"].to(dev), batch["boxes"].to(dev).float(), flipped.to(dev)
        for k, img in enumerate(batch["images"]):
            img01 = img.to(dev, non_blocking=True).float().div_(255.0)
            for f in (False, True):
                sel = torch.nonzero((image_of == k) & (flipped == f)).flatten()
                if sel.numel():
                    w = img01.shape[-1]
                    probs[sel] = (self._teach(img01.flip(-1), flip_boxes(boxes[sel], w), run) if f
                                  else self._teach(img01, boxes[sel], run))
        return probs

    def count(self, batch) -> int:
        return self._regions if self.mode == "shared" else int(batch["labels"].numel())

    @property
    def can_evaluate(self) -> bool:
        return self.val_set is not None

    def evaluate(self, run: Run) -> tuple[dict[str, Any], float]:
        cfg = self.cfg
        if self.val_props is None:
            recs = self.val_set.records
            self.val_records = recs[: int(cfg["eval_max_images"])] if cfg["eval_max_images"] else recs
            spec = cfg["val_proposals"] or cfg["proposals"]
            self.val_props = load_proposal_set(spec, self.val_records, run.work_dir, cfg["val_split"],
                                               cfg["proposal_kwargs"], cfg["proposal_workers"], distributed=True)
        # The inference runtime's exact rewrite of the network, in the run's precision.
        net = optimize(run.eval_model(), device=run.device, precision=run.precision)
        res, dets = evaluate_detector(net, self.val_records, self.class_names, self.val_props,
                                   device=run.device, score_thr=float(cfg["eval_score_thr"]),
                                   nms_thr=float(cfg["nms_iou"]), max_dets=int(cfg["eval_max_dets"]),
                                   max_proposals=cfg["eval_max_proposals"] or cfg["max_proposals"])
        run.model.train()
        self._last_val = (dets, res["per_class"])
        row = {f"val_{k}": v for k, v in res.items() if k != "per_class"}
        row["val_per_class_ap"] = res["per_class"]
        return row, res["voc_mAP"]

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.meta

    def board_images(self, n: int = 3) -> dict[str, Any]:
        """The first ``n`` val images with their detections drawn, and the per-class precision-recall curves."""
        if getattr(self, "_last_val", None) is None:
            return {}
        dets, aps = self._last_val
        out = {}
        for k, (rec, d) in enumerate(zip(self.val_records[:n], dets[:n])):
            keep = d["scores"] >= 0.3  # the detections a user would look at, not the 0.001 tail scored for mAP
            out[f"val/detections_{k}"] = draw_detections(read_image(rec.path), {key: v[keep] for key, v in d.items()},
                                                         self.class_names)
        voc = build_evaluator("voc", self.class_names)
        voc.reset()
        voc.process(list(self.val_records), dets)
        voc.evaluate()
        with tempfile.TemporaryDirectory() as tmp:
            plot_pr_curves(voc.curves, Path(tmp) / "pr.png", aps=aps)
            out["val/pr_curves"] = read_image(Path(tmp) / "pr.png")
        return out

    def finish(self, run: Run, result: dict[str, Any]) -> None:
        from gdet.engine import is_main_process

        last = run.work_dir / "last.pth"
        if is_main_process() and self.cfg["export_fp16"] and last.exists():
            from gdet.detection.model import export_detector

            dst = run.work_dir / "detector_fp16.pth"
            size = export_detector(last, dst, half=True, use_ema=run.ema is not None)
            print(f"exported {dst} ({size / 1e6:.1f} MB, fp16, no aux heads)", flush=True)


def check(cfg: dict) -> dict:
    """``cfg`` over :data:`DEFAULTS`, with every key's range checked (one-line :class:`ConfigError`)."""
    return complete_config(cfg, DEFAULTS, CHECKS, "no dataset given")


def train(cfg: dict) -> dict[str, Any]:
    """Fine-tune a detector as ``cfg`` says (see :data:`DEFAULTS`; missing keys take their defaults); ``mode``
    picks R-CNN (``rcnn``, the default) or shared-feature (``shared``) training.

    ``batch_size`` is regions per process per step (shared mode: over ``images_per_batch`` images). Writes to
    ``work_dir``: ``best.pth`` (best val VOC mAP), ``last.pth`` (every epoch; ``resume=``), ``metrics.jsonl``,
    ``curves.png``, ``config.yaml`` and, with ``export_fp16``, ``detector_fp16.pth``.

    Returns:
        ``{"best_score" (val VOC mAP), "best_epoch", "last": <last epoch's metrics>, "work_dir", "rank"}``.
    """
    cfg = check(cfg)
    return fit(DetectionTask(cfg), cfg)
