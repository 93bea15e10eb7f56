"""Classifier training with the paper's recipe: a :class:`~gdet.engine.Task` for gdet's one training loop
(single GPU, CPU or torchrun)."""
from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gdet.backbones import build_backbone, list_backbones
from gdet.classification.gpu_input import BatchTrainAugment, build_device_loader
from gdet.classification.model import TASK, Normalizer
from gdet.classification.transforms import INTERPOLATIONS, EvalTransform, TrainTransform
from gdet.config import complete_config, interval, number, one_of, ordered_pair
from gdet.data.folder import read_image_folder
from gdet.data.records import check_split_name
from gdet.data.loading import ClassificationDataset
from gdet.data.voc import read_class_file
from gdet.engine import (autocast, build_loader, compute_loss, load_start_weights, move_to_device, progress,
                         reduce_sum, topk_correct)
from gdet.engine.trainer import (ENGINE_CHECKS, ENGINE_DEFAULTS, Run, Task, backbone_kwargs_check, fit,
                                 input_size_check)
from gdet.errors import ConfigError
from gdet.runtime import optimize

# Every key a classification config may set (configs/cls_*.yaml); docs/classification.md explains each.
DEFAULTS: dict[str, Any] = {
    **copy.deepcopy(ENGINE_DEFAULTS),
    # data: an image folder root/<train_split>/<class>/*.jpg and root/<val_split>/<class>/*.jpg
    "data": None,
    "train_split": "train",
    "val_split": "val",
    "workers": 4,
    "loader": "cpu",               # cpu: decode + augment per image in workers; gpu: batched on the device
    # network
    "backbone": "googlenet",
    "backbone_kwargs": {},
    "aux_logits": True,
    "input_size": 224,
    # optimisation (gdet.engine.build_optimizer / build_scheduler keys)
    "epochs": 60,
    "batch_size": 32,              # images per process
    "aux_weight": 0.3,
    "label_smoothing": 0.0,
    "ema_decay": 0.9999,
    # augmentation
    "aug_scale": [0.08, 1.0],
    "aug_ratio": [0.75, 1.3333333],
    "aug_brightness": 0.4,
    "aug_contrast": 0.4,
    "aug_saturation": 0.4,
    "aug_lighting": 0.1,
    "aug_interpolations": ["bilinear", "area", "nearest", "bicubic"],
    "hflip": 0.5,                  # probability of a horizontal flip
    # execution
    "channels_last": True,
    "work_dir": "runs/cls",
    "log_every": 50,
}

# The range of every key (gdet.config.check_config runs the table).
CHECKS = {
    **ENGINE_CHECKS,
    "backbone": one_of(*list_backbones()),
    "backbone_kwargs": backbone_kwargs_check(),
    "input_size": input_size_check(),
    "aux_weight": number(ge=0),
    "label_smoothing": interval(0, 1, hi_open=True),
    "aug_scale": ordered_pair(0, 1),
    "aug_ratio": ordered_pair(0, 100),
    "aug_brightness": number(ge=0),
    "aug_contrast": number(ge=0),
    "aug_saturation": number(ge=0),
    "aug_lighting": number(ge=0),
    "aug_interpolations": lambda v, cfg: None if isinstance(v, list) and v and all(m in INTERPOLATIONS for m in v)
    else f"must be a non-empty list of {', '.join(INTERPOLATIONS)}, got {v!r}",
    "hflip": interval(0, 1),
    "loader": one_of("cpu", "gpu"),
}


def build_model(cfg: dict, num_classes: int, *, load_weights: bool = True) -> nn.Module:
    """The network named by ``cfg["backbone"]`` with ``num_classes`` outputs, started from ``weights`` (a local
    file; a different classifier size is re-initialised; any other misfit is refused unless
    ``weights_strict: false``)."""
    model = build_backbone(cfg["backbone"], num_classes=num_classes, **backbone_kwargs(cfg))
    if load_weights and cfg.get("weights"):
        load_start_weights(model, cfg["weights"], strict=bool(cfg["weights_strict"]))
    model.input_size = int(cfg["input_size"])
    return model


def backbone_kwargs(cfg: dict) -> dict:
    return {**dict(cfg.get("backbone_kwargs") or {}), "aux_logits": bool(cfg["aux_logits"])}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, precision: str = "fp32",
             channels_last: bool = False, desc: str = "val") -> dict[str, float]:
    """1-crop loss, top-1 and top-5 accuracy of ``model`` (eval mode) on ``loader``, summed over all ranks.

    Returns:
        ``{"loss", "acc1", "acc5", "n"}``.
    """
    was_training = model.training
    model.eval()
    prepare = Normalizer(model)
    stats = torch.zeros(4, dtype=torch.float64, device=device)
    for images, targets in progress(loader, desc=desc, leave=False):
        images = prepare(move_to_device(images, device, channels_last))
        targets = move_to_device(targets, device)
        with autocast(device, precision):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        c1, c5 = topk_correct(logits, targets)
        stats += torch.stack([loss.double(), c1.double(), c5.double(),
                              torch.tensor(float(len(targets)), dtype=torch.float64, device=device)])
    model.train(was_training)
    total = reduce_sum(stats)
    n = float(total[3])
    if n == 0:
        return {"loss": float("nan"), "acc1": float("nan"), "acc5": float("nan"), "n": 0}
    return {"loss": float(total[0]) / n, "acc1": float(total[1]) / n, "acc5": float(total[2]) / n, "n": int(n)}


class ClassificationTask(Task):
    """Image-folder classification: cross-entropy (+ 0.3 x each aux head), 1-crop validation top-1/top-5; the
    best epoch is the one with the best val top-1 of the averaged weights (of the raw ones without averaging)."""

    name = TASK
    loss_keys = ("aux_logits", "aux_weight", "label_smoothing")

    @property
    def score_name(self) -> str:
        """The figure that picks ``best.pth``, named as in ``metrics.jsonl``: the averaged weights' when they exist."""
        return "ema_val_acc1" if float(self.cfg.get("ema_decay") or 0.0) > 0 else "val_acc1"

    def title(self) -> str:
        return f"{self.cfg['backbone']} on {Path(self.cfg['data']).name}"

    def setup(self, run: Run) -> nn.Module:
        cfg, info, device = self.cfg, run.info, run.device
        root = Path(cfg["data"])
        size = int(cfg["input_size"])
        # A dataset-level classes.txt (``gdet data synth --task classify`` writes one) fixes the label order, so
        # that a classifier's labels match the detection labels of the same data.
        names = read_class_file(root / "classes.txt") if (root / "classes.txt").is_file() else None
        ck = run.resume_ckpt
        if ck is not None and ck.get("class_names"):
            # A resumed run keeps the label order it was trained with, whatever the folder says now.
            if names is not None and list(names) != list(ck["class_names"]):
                raise ConfigError(f"{cfg['resume']}: its class order differs from {root / 'classes.txt'}; "
                                  "resuming would permute the labels")
            names = list(ck["class_names"])
        train_dir = root / check_split_name(cfg["train_split"], "train_split")
        paths, labels, self.class_names = read_image_folder(train_dir, names)
        aug = dict(scale=cfg["aug_scale"], ratio=cfg["aug_ratio"], brightness=float(cfg["aug_brightness"]),
                   contrast=float(cfg["aug_contrast"]), saturation=float(cfg["aug_saturation"]),
                   lighting=float(cfg["aug_lighting"]), interpolations=cfg["aug_interpolations"],
                   hflip=float(cfg["hflip"]))
        self.val_loader = None
        if cfg.get("val_split"):
            vpaths, vlabels, _ = read_image_folder(root / check_split_name(cfg["val_split"], "val_split"),
                                                 self.class_names)
            self.val_loader = build_loader(ClassificationDataset(vpaths, vlabels, EvalTransform(size)),
                                           batch_size=int(cfg["batch_size"]), train=False, info=info,
                                           num_workers=int(cfg["workers"]), device=device)
        if cfg["loader"] == "gpu":
            # Workers read compressed bytes only; decoding and the paper's augmentations run batched on the device.
            self.loader = build_device_loader(paths, labels, BatchTrainAugment(size, **aug),
                                              batch_size=int(cfg["batch_size"]), device=device, info=info,
                                              num_workers=int(cfg["workers"]), seed=int(cfg["seed"]))
        else:
            self.loader = build_loader(ClassificationDataset(paths, labels, TrainTransform(size, **aug)),
                                       batch_size=int(cfg["batch_size"]), train=True, info=info,
                                       num_workers=int(cfg["workers"]), device=device, seed=int(cfg["seed"]))
        if len(self.loader) == 0:
            raise ConfigError(f"{root / cfg['train_split']}: fewer images ({len(paths)}) than one batch "
                              f"({cfg['batch_size']} per process)")
        model = build_model(cfg, len(self.class_names), load_weights=ck is None)
        self.prepare = Normalizer(model)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg["label_smoothing"]))
        self.aux_weight = float(cfg["aux_weight"])
        self.meta = {"task": TASK, "class_names": self.class_names, "backbone": cfg["backbone"],
                     "backbone_kwargs": backbone_kwargs(cfg), "preprocessing": model.preprocessing()}
        return model

    def loss(self, net: nn.Module, batch, run: Run) -> dict[str, Tensor]:
        images, targets = batch
        images = self.prepare(move_to_device(images, run.device, run.channels_last))
        targets = move_to_device(targets, run.device)
        loss, logits = compute_loss(net(images), targets, self.loss_fn, self.aux_weight)
        with torch.no_grad():
            (c1,) = topk_correct(logits.detach(), targets, (1,))
        return {"loss": loss, "acc1": c1.double() / max(len(targets), 1)}

    @property
    def can_evaluate(self) -> bool:
        return self.val_loader is not None

    def evaluate(self, run: Run) -> tuple[dict[str, Any], float]:
        # The inference runtime's exact rewrite (folded BN, fused 1x1 convolutions) in the run's precision.
        fast = partial(optimize, device=run.device, precision=run.precision)
        kw = dict(precision="fp32", channels_last=run.channels_last)
        v = evaluate(fast(run.model), self.val_loader, run.device, **kw)
        row = {"val_loss": v["loss"], "val_acc1": v["acc1"], "val_acc5": v["acc5"]}
        score = v["acc1"]
        if run.ema is not None:
            ve = evaluate(fast(run.ema.module), self.val_loader, run.device, desc="val (averaged)", **kw)
            row.update(ema_val_loss=ve["loss"], ema_val_acc1=ve["acc1"], ema_val_acc5=ve["acc5"])
            score = ve["acc1"]
        return row, score

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.meta


def check(cfg: dict) -> dict:
    """``cfg`` over :data:`DEFAULTS`, with every key's range checked (one-line :class:`ConfigError`)."""
    return complete_config(cfg, DEFAULTS, CHECKS, "set it to an image folder with train/ and val/ sub-folders")


def train(cfg: dict) -> dict[str, Any]:
    """Train a classifier as ``cfg`` (see :data:`DEFAULTS`) says; launched under torchrun it runs data-parallel.

    ``batch_size`` is images per process. Writes to ``work_dir``: ``best.pth`` (best val top-1 of the averaged
    weights, or of the raw ones without averaging), ``last.pth`` (every epoch, for ``resume=``),
    ``metrics.jsonl`` (one line per epoch), ``curves.png`` and ``config.yaml``.

    Returns:
        ``{"best_acc1", "best_score", "best_epoch", "last": <last epoch's metrics>, "work_dir", "rank"}``.
    """
    cfg = check(cfg)
    result = fit(ClassificationTask(cfg), cfg)
    return {"best_acc1": result["best_score"] if result["best_score"] is not None else float("nan"), **result}
