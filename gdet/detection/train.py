"""R-CNN detector fine-tuning and evaluation as plain functions over gdet's engine (AMP, DDP, checkpoints, logs).

``tools/train_det.py`` is a thin wrapper over :func:`train`. Every config key is listed in :data:`DET_DEFAULTS`
and documented in ``README.md (detection section)``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from gdet.backbones import BackboneOutput
from gdet.detection.labels import RegionLabels, encode_boxes, label_regions
from gdet.detection.crops import crop_regions
from gdet.detection.model import Detector, build_detector, detect_image, detector_checkpoint_meta
from gdet.detection.sampler import RegionSampler
from gdet.errors import ConfigError, GdetError
from gdet.structures import ImageRecord

__all__ = ["DET_DEFAULTS", "RegionBatches", "evaluate_detector", "load_proposal_set", "prepare_regions",
           "train", "train_one_epoch"]

DET_DEFAULTS: dict[str, Any] = {
    # data
    "data": None,                 # dataset root (VOC folder / folder of <split>.json) or a COCO .json
    "train_split": "train",
    "val_split": "val",
    "proposals": "ss",            # a proposal method (computed once, cached in out/) or a .npz proposal file
    "val_proposals": None,        # proposal file for the val split (default: like `proposals`)
    "proposal_kwargs": {},        # options of the proposal method
    "proposal_workers": 0,        # processes computing proposals
    "max_proposals": 2000,        # proposals kept per image (best ranked first)
    # model
    "backbone": "googlenet",
    "backbone_kwargs": {},
    "weights": None,              # classification checkpoint to start from (null: from scratch)
    "input_size": 224,            # warped crop side
    "context_pad": 16,            # context pixels at the warped size (R-CNN: 16)
    "sampling_ratio": 1,          # roi_align samples per pixel (1 = bilinear warp, as R-CNN)
    "aux_logits": True,           # train with the aux heads (weighted aux_weight)
    "aux_weight": 0.3,
    "bbox_reg": False,            # class-specific box regression head (R-CNN appendix C)
    "bbox_iou": 0.6,              # regression trained on proposals with IoU > this
    "bbox_loss_weight": 1.0,
    # regions and batches
    "fg_iou": 0.5,
    "bg_iou_lo": 0.0,
    "batch_size": 128,            # regions per iteration (global, split over DDP ranks)
    "fg_fraction": 0.25,          # 32 of 128
    "iters_per_epoch": None,      # null: ceil(#foreground regions / 32)
    "flip": True,                 # horizontal flip of half the crops
    "cache_images": True,         # keep decoded training images in memory
    "workers": 0,                 # DataLoader workers decoding images
    # optimisation (gdet.engine.optim keys)
    "epochs": 2,
    "optimizer": "sgd",
    "lr": 0.001,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "no_decay_norm_bias": True,
    "lr_schedule": "step",
    "lr_step_epochs": 8,
    "lr_gamma": 0.1,
    "lr_milestones": [],
    "min_lr": 0.0,
    "warmup_epochs": 0.0,
    "warmup_factor": 0.1,
    "grad_clip": None,
    "ema": False,
    "ema_decay": 0.999,
    # numerics and machine
    "device": "auto",
    "precision": "fp32",
    "channels_last": False,
    "seed": 0,
    # evaluation
    "eval_every": 1,              # epochs between val mAP evaluations (0: never)
    "eval_images": None,          # evaluate on the first N val images (null: all)
    "eval_max_proposals": None,   # proposals per val image (null: max_proposals)
    "eval_score_thr": 0.001,
    "eval_nms": 0.3,
    "eval_max_dets": 100,
    # output
    "out": "runs/det",
    "resume": None,
    "log_every": 10,
    "max_steps": None,            # stop each epoch after this many steps (smoke runs)
    "export_fp16": True,          # also write out/detector_fp16.pth (inference-only, no aux heads)
}


def load_proposal_set(spec: str, records: Sequence[ImageRecord], out_dir: Path, split: str,
                      method_kwargs: dict | None = None, workers: int = 0):
    """A :class:`~gdet.proposals.ProposalSet` for ``records``: read from a ``.npz`` file, or computed with the
    named method and cached as ``out_dir/proposals_<method>_<split>.npz`` (resumable)."""
    from gdet.proposals import list_proposers, load_proposals
    from gdet.proposals.compute import compute_proposals

    if str(spec).endswith(".npz"):
        props = load_proposals(spec)
    elif spec in list_proposers():
        path = Path(out_dir) / f"proposals_{spec}_{split}.npz"
        compute_proposals([(r.image_id, r.path) for r in records], spec, path, method_kwargs=method_kwargs,
                          workers=workers, meta={"split": split})
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


def crop_batch(model: Detector, batch: dict[str, Any], device: torch.device, flip: bool = False,
               channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """Warp a batch's regions on ``device``. Returns crops (Tensor[B, 3, S, S]) in batch order and the flip mask."""
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
    if flip:
        flipped = torch.rand(n).to(device) < 0.5
        crops = torch.where(flipped[:, None, None, None], crops.flip(-1), crops)
    if channels_last:
        crops = crops.contiguous(memory_format=torch.channels_last)
    return crops, flipped


def detection_loss(out, labels: Tensor, bbox_targets: Tensor, bbox_use: Tensor, flipped: Tensor,
                   aux_weight: float = 0.3, bbox_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy over C + 1 classes (+ ``aux_weight`` x each aux head's), plus smooth-L1 box regression on
    the regions marked ``bbox_use`` (its x offset negated for flipped crops)."""
    from gdet.engine.loop import compute_loss

    output = BackboneOutput(out.logits, out.aux_logits) if out.aux_logits else out.logits
    cls_loss, _ = compute_loss(output, labels, F.cross_entropy, aux_weight)
    parts = {"loss_cls": cls_loss.detach()}
    loss = cls_loss
    if out.bbox_deltas is not None:
        idx = torch.nonzero(bbox_use).flatten()
        if idx.numel():
            t = bbox_targets[idx].clone()
            t[:, 0] = torch.where(flipped[idx], -t[:, 0], t[:, 0])
            pred = out.bbox_deltas[idx, labels[idx] - 1].float()
            box_loss = F.smooth_l1_loss(pred, t, beta=1.0 / 9, reduction="sum") / max(labels.numel(), 1)
        else:
            box_loss = out.bbox_deltas.sum() * 0.0  # keeps every parameter in the graph (DDP)
        loss = loss + bbox_weight * box_loss
        parts["loss_bbox"] = box_loss.detach()
    return loss, parts


def train_one_epoch(model, loader, optimizer, scheduler, device: torch.device, *, epoch: int, cfg: dict,
                    scaler=None, ema=None) -> dict[str, float]:
    """One epoch of R-CNN fine-tuning. Returns loss, accuracy, foreground accuracy, regions/s, lr (all ranks)."""
    from gdet.engine import autocast, optimizer_step, progress, reduce_sum, unwrap_model

    model.train()
    det = unwrap_model(model)
    stats = torch.zeros(6, dtype=torch.float64, device=device)  # loss*n, correct, fg correct, fg n, n, bbox*n
    params = [p for p in model.parameters() if p.requires_grad] if cfg["grad_clip"] else None
    n_steps = len(loader) if cfg["max_steps"] is None else min(len(loader), int(cfg["max_steps"]))
    bar = progress(total=n_steps, desc=f"epoch {epoch}", leave=False)
    t0 = time.perf_counter()
    step = 0
    for step, batch in enumerate(loader, 1):
        crops, flipped = crop_batch(det, batch, device, cfg["flip"], cfg["channels_last"])
        labels = batch["labels"].to(device)
        with autocast(device, cfg["precision"]):
            out = model(crops)
            loss, parts = detection_loss(out, labels, batch["bbox_targets"].to(device), batch["bbox_use"].to(device),
                                         flipped, cfg["aux_weight"], cfg["bbox_loss_weight"])
        optimizer_step(loss, optimizer, scaler=scaler, grad_clip=cfg["grad_clip"], parameters=params)
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(det)
        with torch.no_grad():
            n = labels.numel()
            pred = out.logits.argmax(1)
            fg = labels > 0
            stats += torch.stack([loss.detach().double() * n, (pred == labels).sum().double(),
                                  (pred[fg] == labels[fg]).sum().double(), fg.sum().double(),
                                  torch.tensor(float(n), dtype=torch.float64, device=device),
                                  parts.get("loss_bbox", torch.zeros((), device=device)).double() * n])
        if step % max(int(cfg["log_every"]), 1) == 0 or step == n_steps:
            cur = float(stats[0] / stats[4].clamp(min=1))
            if not math.isfinite(cur):
                raise GdetError(f"training diverged at epoch {epoch} step {step} (loss {cur}); lower the lr")
            bar.set_postfix(loss=f"{cur:.4f}", acc=f"{float(stats[1] / stats[4].clamp(min=1)):.3f}")
        bar.update(1)
        if step >= n_steps:
            break
    bar.close()
    total = reduce_sum(stats)
    n = float(total[4].clamp(min=1))
    res = {"loss": float(total[0]) / n, "acc": float(total[1]) / n,
           "fg_acc": float(total[2]) / max(float(total[3]), 1.0),
           "regions_per_s": float(total[4]) / max(time.perf_counter() - t0, 1e-9),
           "lr": float(optimizer.param_groups[0]["lr"]), "steps": step}
    if det.bbox_reg:
        res["loss_bbox"] = float(total[5]) / n
    return res


@torch.no_grad()
def run_detector(model, records: Sequence[ImageRecord], proposals, *, device: torch.device, score_thr: float,
                 nms_thr: float, max_dets: int, max_proposals: int | None, precision: str = "fp32",
                 rank: int = 0, world_size: int = 1, desc: str = "detect") -> list[tuple[int, dict]]:
    """Detect on this rank's share of ``records`` (every ``world_size``-th image). Returns (index, dets) pairs."""
    from gdet.data import read_image
    from gdet.engine import progress

    out = []
    mine = list(range(rank, len(records), world_size))
    for i in progress(mine, desc=desc, leave=False):
        rec = records[i]
        boxes = proposals[rec.image_id][0] if not hasattr(proposals, "propose") else proposals
        dets = detect_image(model, read_image(rec.path), boxes, score_thr=score_thr, nms_thr=nms_thr,
                            max_dets=max_dets, max_proposals=max_proposals, precision=precision, device=device)
        out.append((i, dets))
    return out


def evaluate_detector(model, records: Sequence[ImageRecord], class_names: Sequence[str], proposals, *,
                      device: torch.device, score_thr: float = 0.001, nms_thr: float = 0.3, max_dets: int = 100,
                      max_proposals: int | None = None, precision: str = "fp32") -> tuple[dict, list[dict]]:
    """Val mAP through gdet's evaluators (VOC 2010+, VOC 2007 11-point, COCO), images split over DDP ranks.

    Returns:
        ``({"voc_mAP", "voc07_mAP", "coco_AP", "coco_AP50", "per_class"}, detections per image)``.
    """
    from gdet.engine import all_gather_objects
    from gdet.evaluation.coco import COCOEvaluator
    from gdet.evaluation.voc import VOCEvaluator
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = run_detector(model, records, proposals, device=device, score_thr=score_thr, nms_thr=nms_thr,
                        max_dets=max_dets, max_proposals=max_proposals, precision=precision, rank=rank,
                        world_size=world, desc="val")
    pairs = sorted((p for part in all_gather_objects(mine) for p in part), key=lambda p: p[0])
    dets = [d for _, d in pairs]
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

    if not cfg["data"]:
        raise ConfigError("data: no dataset given (data=PATH)")
    return load_detection_set(cfg["data"], split=split)


def train(cfg: dict) -> dict:
    """Fine-tune an R-CNN detector as configured (see :data:`DET_DEFAULTS`). Returns the last epoch's metrics."""
    from gdet.engine import (EpochRecorder, barrier, build_ema, build_grad_scaler, build_optimizer, build_scheduler,
                             init_distributed, is_main_process, resolve_device, resume_training_state,
                             seed_everything, unwrap_model, wrap_ddp)
    from gdet.io import save_json

    info = init_distributed(cfg["device"])
    device = resolve_device(cfg["device"], info.local_rank)
    seed_everything(cfg["seed"], info.rank)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)

    train_set = _read_split(cfg, cfg["train_split"])
    val_set = _read_split(cfg, cfg["val_split"]) if cfg["eval_every"] else None
    class_names = train_set.class_names
    # Proposals: rank 0 computes (and caches) them; the others wait and read the file.
    if is_main_process():
        load_proposal_set(cfg["proposals"], train_set.records, out, cfg["train_split"], cfg["proposal_kwargs"],
                          cfg["proposal_workers"])
    barrier()
    train_props = load_proposal_set(cfg["proposals"], train_set.records, out, cfg["train_split"],
                                    cfg["proposal_kwargs"])
    regions, bbox = prepare_regions(train_set.records, train_props, max_proposals=cfg["max_proposals"],
                                    fg_iou=cfg["fg_iou"], bg_iou_lo=cfg["bg_iou_lo"], bbox_iou=cfg["bbox_iou"])
    sampler = RegionSampler(regions, cfg["batch_size"], cfg["fg_fraction"], seed=cfg["seed"])
    iters = int(cfg["iters_per_epoch"] or sampler.batches_per_epoch())
    if cfg["max_steps"]:
        iters = min(iters, int(cfg["max_steps"]))

    bb_kwargs = dict(cfg["backbone_kwargs"] or {})
    bb_kwargs["aux_logits"] = bool(cfg["aux_logits"])
    model = build_detector(cfg["backbone"], class_names, weights=cfg["weights"], backbone_kwargs=bb_kwargs,
                           context_pad=cfg["context_pad"], input_size=cfg["input_size"], bbox_reg=cfg["bbox_reg"],
                           sampling_ratio=cfg["sampling_ratio"]).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, iters)
    scaler = build_grad_scaler(device, cfg["precision"])
    ema = build_ema(model, cfg["ema_decay"], device=device) if cfg["ema"] else None
    start_epoch = 0
    if cfg["resume"]:
        ckpt = resume_training_state(cfg["resume"], model=model, optimizer=optimizer, scheduler=scheduler,
                                     scaler=scaler, ema=ema)
        start_epoch = int(ckpt["epoch"])
    ddp = wrap_ddp(model, info, device)
    meta = detector_checkpoint_meta(model, bb_kwargs)
    recorder = EpochRecorder(out, title="R-CNN fine-tuning", resume=bool(cfg["resume"]), meta=meta,
                             hidden=("val_per_class_ap",))
    if is_main_process():
        save_json({k: v for k, v in cfg.items()}, out / "config.json")
        print(f"train: {len(train_set)} images, {sampler.num_fg} foreground / {sampler.num_bg} background regions, "
              f"{iters} iterations of {cfg['batch_size']} per epoch, device {device}"
              + (f", {info.world_size} processes" if info.distributed else ""), flush=True)
    val_props = None
    metrics: dict[str, Any] = {}
    # Shared over epochs in this process (with workers, each worker process fills its own copy).
    image_cache: dict[int, Tensor] | None = {} if cfg["cache_images"] else None
    for epoch in range(start_epoch, int(cfg["epochs"])):
        batches = [RegionSampler.shard(b, info.rank, info.world_size) for b in sampler.epoch(epoch, iters)]
        data = RegionBatches(train_set.records, regions, bbox, batches, cache=image_cache)
        loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=int(cfg["workers"]),
                            pin_memory=device.type == "cuda")
        metrics = train_one_epoch(ddp, loader, optimizer, scheduler, device, epoch=epoch, cfg=cfg, scaler=scaler,
                                  ema=ema)
        metrics["epoch"] = epoch + 1
        if cfg["eval_every"] and ((epoch + 1) % int(cfg["eval_every"]) == 0 or epoch + 1 == int(cfg["epochs"])):
            if val_props is None:
                val_records = val_set.records[: cfg["eval_images"]] if cfg["eval_images"] else val_set.records
                spec = cfg["val_proposals"] or cfg["proposals"]
                if is_main_process():
                    load_proposal_set(spec, val_records, out, cfg["val_split"], cfg["proposal_kwargs"],
                                      cfg["proposal_workers"])
                barrier()
                val_props = load_proposal_set(spec, val_records, out, cfg["val_split"], cfg["proposal_kwargs"])
            net = ema.module if ema is not None else unwrap_model(model)
            res, _ = evaluate_detector(net, val_records, class_names, val_props, device=device,
                                       score_thr=cfg["eval_score_thr"], nms_thr=cfg["eval_nms"],
                                       max_dets=cfg["eval_max_dets"],
                                       max_proposals=cfg["eval_max_proposals"] or cfg["max_proposals"],
                                       precision=cfg["precision"])
            metrics.update({k: v for k, v in res.items() if k != "per_class"})
            metrics["val_per_class_ap"] = res["per_class"]
            model.train()
        recorder.record({"epoch": epoch + 1, **metrics}, epoch=epoch + 1, config=cfg, model=model,
                        optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
    if is_main_process() and cfg["export_fp16"] and (out / "last.pth").exists():
        from gdet.detection.model import export_detector

        size = export_detector(out / "last.pth", out / "detector_fp16.pth", half=True, use_ema=bool(cfg["ema"]))
        print(f"exported {out / 'detector_fp16.pth'} ({size / 1e6:.1f} MB, fp16, no aux heads)", flush=True)
    barrier()
    return metrics
