"""MultiBox training: a :class:`~gdet.engine.Task` for gdet's one training loop (AMP, DDP under torchrun, exact
resume, averaging)."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from gdet.backbones import list_backbones
from gdet.config import complete_config, interval, number, one_of
from gdet.engine import autocast, build_loader, load_start_weights, move_to_device, progress, reduce_sum
from gdet.engine.trainer import (ENGINE_CHECKS, ENGINE_DEFAULTS, Run, Task, backbone_kwargs_check, fit,
                                 input_size_check)
from gdet.data.image import read_image
from gdet.errors import ConfigError
from gdet.proposals.multibox import (HEADS, TASK, MultiBox, build_multibox, build_trunk, encode_targets,
                                     grid_priors, image_to_input, kmeans_priors, multibox_loss, postprocess)

# Every key a MultiBox config may set (configs/multibox_*.yaml); docs/proposals.md explains them.
DEFAULTS: dict[str, Any] = {
    **copy.deepcopy(ENGINE_DEFAULTS),
    # data: anything gdet.data.load_detection_set reads (VOC root, COCO json, `gdet data synth` folder)
    "data": None,
    "train_split": "train",
    "val_split": "val",
    "val_data": None,  # validate on another dataset's val_split (default: data)
    "workers": 2,
    # network
    "backbone": "googlenet",
    "backbone_kwargs": {},
    "input_size": 224,
    "head": "fc",  # fc: Erhan et al.'s fully connected head; conv: convolutional priors (Szegedy et al. 2014)
    "num_priors": 200,  # fc head: k-means priors
    "anchors": 9,  # conv head: k-means box shapes per feature-map cell
    "match_iou": None,  # also match priors with IoU >= this to a ground truth (bipartite matches only if None)
    "hidden": 256,
    "grid": 4,  # fc head: pooled grid side
    "dropout": 0.0,
    "alpha": 0.3,
    "hflip": 0.5,  # probability of a horizontal flip
    # optimisation (gdet.engine.build_optimizer / build_scheduler keys)
    "epochs": 30,
    "batch_size": 32,  # images per process
    "grad_clip": 10.0,
    # evaluation: recall at IoU 0.5 of the top-k boxes on the val split
    "eval_top_k": 100,
    "nms_iou": 0.7,
    "eval_max_images": None,
    # execution
    "work_dir": "runs/multibox",
}

CHECKS = {
    **ENGINE_CHECKS,
    "backbone": one_of(*list_backbones()),
    "backbone_kwargs": backbone_kwargs_check(trunk=True),
    "input_size": input_size_check(trunk=True),
    "head": one_of(*HEADS),
    "num_priors": number(ge=1, integer=True),
    "anchors": number(ge=1, integer=True),
    "match_iou": number(gt=0, le=1, null=True),
    "hidden": number(ge=1, integer=True),
    "grid": number(ge=1, integer=True),
    "dropout": interval(0, 1, hi_open=True),
    "alpha": number(ge=0),
    "hflip": interval(0, 1),
    "eval_top_k": number(ge=1, integer=True),
    "nms_iou": interval(0, 1, lo_open=True),
    "eval_max_images": number(ge=1, integer=True, null=True),
}


def normalised_boxes(record) -> torch.Tensor:
    """A record's non-ignored boxes in normalised (0-1) xyxy."""
    scale = torch.tensor([record.width, record.height, record.width, record.height], dtype=torch.float32)
    return (record.boxes[~record.ignore] / scale).clamp(0, 1)


class MultiBoxDataset(Dataset):
    """Records -> (uint8 image ``Tensor[3, S, S]``, ``{"boxes": Tensor[K, 4], "matched": Tensor[K]}``), with a
    random horizontal flip when training. Matching to the priors happens here, in the loader workers."""

    def __init__(self, records, priors: torch.Tensor, size: int, hflip: float = 0.0, match_iou: float | None = None):
        self.records, self.priors, self.size, self.hflip = list(records), priors, int(size), float(hflip)
        self.match_iou = None if match_iou is None else float(match_iou)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):

        r = self.records[i]
        image = image_to_input(np.asarray(read_image(r.path)), self.size)
        gt = normalised_boxes(r)
        if self.hflip and torch.rand(()) < self.hflip:
            image = image.flip(-1)
            gt = torch.stack([1 - gt[:, 2], gt[:, 1], 1 - gt[:, 0], gt[:, 3]], 1)
        target, matched = encode_targets(self.priors, gt, self.match_iou)
        return image, {"boxes": target, "matched": matched, "gt": gt, "size": torch.tensor([r.width, r.height])}


def collate(batch):
    images = torch.stack([b[0] for b in batch])
    targets = {"boxes": torch.stack([b[1]["boxes"] for b in batch]),
               "matched": torch.stack([b[1]["matched"] for b in batch]),
               "gt": [b[1]["gt"] for b in batch], "size": torch.stack([b[1]["size"] for b in batch])}
    return images, targets


@torch.no_grad()
def feature_grid(backbone: str, backbone_kwargs: dict, size: int) -> tuple[int, int]:
    """(rows, cols) of ``backbone``'s final feature map for a ``size`` x ``size`` input."""
    net = build_trunk(backbone, backbone_kwargs, num_classes=1)
    feats = net.eval().forward_features(torch.zeros(1, 3, size, size))
    return int(feats.shape[-2]), int(feats.shape[-1])


def _head(cfg: dict) -> dict:
    return {"hidden": int(cfg["hidden"]), "grid": int(cfg["grid"]), "dropout": float(cfg["dropout"]),
            "kind": str(cfg["head"]), "anchors": int(cfg["anchors"])}


class MultiBoxTask(Task):
    """MultiBox: matching loss (alpha x localisation + confidence) on k-means or grid priors; the best epoch is
    the one with the best val recall at IoU 0.5 of the top ``eval_top_k`` boxes."""

    name = TASK
    loss_keys = ("alpha", "match_iou")

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.score_name = f"val_recall@{int(cfg['eval_top_k'])}"

    def title(self) -> str:
        return f"MultiBox ({self.cfg['backbone']}, {self.cfg['head']} head)"

    def setup(self, run: Run) -> nn.Module:
        from gdet.data.dataset import load_detection_set

        cfg, info, device = self.cfg, run.info, run.device
        train_set = load_detection_set(cfg["data"], split=cfg["train_split"])
        size = int(cfg["input_size"])
        head = _head(cfg)
        if run.resume_ckpt is not None and run.resume_ckpt.get("priors") is not None:
            priors = run.resume_ckpt["priors"]  # the run's own priors, whatever the data says now
        elif head["kind"] == "conv":
            boxes = torch.cat([normalised_boxes(r) for r in train_set.records])
            priors = grid_priors(boxes, feature_grid(cfg["backbone"], cfg["backbone_kwargs"], size), head["anchors"],
                                 seed=int(cfg["seed"]))
        else:
            boxes = torch.cat([normalised_boxes(r) for r in train_set.records])
            priors = kmeans_priors(boxes, int(cfg["num_priors"]), seed=int(cfg["seed"]))
        self.loader = build_loader(MultiBoxDataset(train_set.records, priors, size, float(cfg["hflip"]),
                                                   cfg["match_iou"]),
                                   batch_size=int(cfg["batch_size"]), train=True, info=info,
                                   num_workers=int(cfg["workers"]), device=device, seed=int(cfg["seed"]),
                                   collate_fn=collate)
        if len(self.loader) == 0:
            raise ConfigError(f"{cfg['data']}: fewer training images ({len(train_set)}) than one batch "
                              f"({cfg['batch_size']} per process)")
        self.val_loader = None
        if cfg.get("val_split"):
            val_records = load_detection_set(cfg.get("val_data") or cfg["data"], split=cfg["val_split"]).records
            if cfg.get("eval_max_images"):
                val_records = val_records[: int(cfg["eval_max_images"])]
            self.val_loader = build_loader(MultiBoxDataset(val_records, priors, size, match_iou=cfg["match_iou"]),
                                           batch_size=int(cfg["batch_size"]), train=False, info=info,
                                           num_workers=int(cfg["workers"]), device=device, collate_fn=collate)
        model = build_multibox(backbone=cfg["backbone"], priors=priors, backbone_kwargs=cfg["backbone_kwargs"],
                               **head)
        if cfg.get("weights") and run.resume_ckpt is None:
            load_start_weights(model.backbone, cfg["weights"], strict=bool(cfg["weights_strict"]))
        self.alpha = float(cfg["alpha"])
        self.top_k, self.nms_iou = int(cfg["eval_top_k"]), float(cfg["nms_iou"])
        self.meta = {"task": TASK, "backbone": cfg["backbone"], "backbone_kwargs": dict(cfg["backbone_kwargs"]),
                     "priors": priors, "head": head, "input_size": size,
                     "preprocessing": model.backbone.preprocessing()}
        return model

    def loss(self, net: nn.Module, batch, run: Run) -> dict[str, Tensor]:
        images, targets = batch
        images = move_to_device(images, run.device)
        tb, tm = move_to_device(targets["boxes"], run.device), move_to_device(targets["matched"], run.device)
        boxes, logits = net(run.model.normalize(images.float() / 255.0))
        with torch.autocast(run.device.type, enabled=False):
            loss, parts = multibox_loss(boxes.float(), logits.float(), tb, tm, self.alpha)
        # The total is alpha x loc + conf; the two parts are logged beside it.
        return {"loss": loss, "loc": parts["loc"].detach(), "conf": parts["conf"].detach()}

    @property
    def can_evaluate(self) -> bool:
        return self.val_loader is not None

    def evaluate(self, run: Run) -> tuple[dict[str, Any], float]:
        v = evaluate(run.eval_model(), self.val_loader, run.device, alpha=self.alpha, top_k=self.top_k,
                     nms_iou=self.nms_iou, precision=run.precision)
        return v, v[self.score_name]

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.meta


@torch.no_grad()
def evaluate(model: MultiBox, loader, device, *, alpha: float = 0.3, top_k: int = 100, nms_iou: float = 0.7,
             precision: str = "fp32") -> dict[str, float]:
    """Validation loss and recall at IoU 0.5 of the top ``top_k`` boxes (after NMS at ``nms_iou``), over all ranks.

    Returns:
        ``{"val_loss", "val_recall@<top_k>"}``.
    """
    from torchvision.ops import box_iou

    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, images, hits, objects
    for images, targets in progress(loader, desc="val", leave=False):
        images = move_to_device(images, device)
        x = model.normalize(images.float() / 255.0)
        with autocast(device, precision):
            boxes, logits = model(x)
        boxes, logits = boxes.float(), logits.float()
        loss, _ = multibox_loss(boxes, logits, targets["boxes"].to(device), targets["matched"].to(device), alpha)
        n = images.shape[0]
        hits = objects = 0
        for b, lg, gt, wh in zip(boxes, logits, targets["gt"], targets["size"]):
            w, h = int(wh[0]), int(wh[1])
            pb, _ = postprocess(b, lg, w, h, top_k=top_k, nms_iou=nms_iou)
            g = gt.to(device) * torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
            objects += g.shape[0]
            if g.shape[0] and pb.shape[0]:
                hits += int((box_iou(g, pb).amax(1) >= 0.5).sum())
        stats += torch.tensor([float(loss) * n, n, hits, objects], dtype=torch.float64, device=device)
    model.train(was_training)
    total = reduce_sum(stats)
    return {"val_loss": float(total[0] / total[1].clamp(min=1)),
            f"val_recall@{top_k}": float(total[2] / total[3].clamp(min=1))}


def check(cfg: dict) -> dict:
    """``cfg`` over :data:`DEFAULTS`, with every key's range checked (one-line :class:`ConfigError`)."""
    return complete_config(cfg, DEFAULTS, CHECKS, "set it to a detection dataset")


def train(cfg: dict) -> dict[str, Any]:
    """Train MultiBox as ``cfg`` (see :data:`DEFAULTS`) says; data-parallel under torchrun.

    ``batch_size`` is images per process. Writes to ``work_dir``: ``best.pth`` (best val recall), ``last.pth``
    (every epoch; ``resume=``), ``metrics.jsonl``, ``curves.png``, ``config.yaml``.

    Returns:
        ``{"best_recall", "best_score", "best_epoch", "last", "work_dir", "rank"}``.
    """
    cfg = check(cfg)
    result = fit(MultiBoxTask(cfg), cfg)
    return {"best_recall": result["best_score"] if result["best_score"] is not None else float("nan"), **result}
