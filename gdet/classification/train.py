"""Classifier training with the paper's recipe: a plain function over gdet's engine (single GPU, CPU or torchrun)."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gdet.backbones import build_backbone
from gdet.classification.model import TASK, Normalizer
from gdet.classification.transforms import EvalTransform, TrainTransform
from gdet.data.folder import read_image_folder
from gdet.data.loading import ClassificationDataset
from gdet.data.voc import read_class_file
from gdet.engine import (EpochRecorder, autocast, build_ema, build_grad_scaler, build_loader, build_optimizer,
                         build_scheduler, cleanup, init_distributed, is_main_process, load_checkpoint,
                         load_model_weights, move_to_device, progress, reduce_sum, resolve_device,
                         resume_training_state, seed_everything, set_epoch, topk_correct, train_one_epoch, wrap_ddp)
from gdet.engine.optim import OPTIM_DEFAULTS
from gdet.errors import ConfigError

# Every key a classification config may set (configs/cls_*.yaml); README.md (classification section) explains each.
DEFAULTS: dict[str, Any] = {
    # data: an image folder root/<train_split>/<class>/*.jpg and root/<val_split>/<class>/*.jpg
    "data": None,
    "train_split": "train",
    "val_split": "val",
    "workers": 4,
    # network
    "backbone": "googlenet",
    "backbone_kwargs": {},
    "aux_logits": True,
    "pretrained": None,
    "input_size": 224,
    # optimisation (gdet.engine.build_optimizer / build_scheduler keys)
    **copy.deepcopy(OPTIM_DEFAULTS),
    "epochs": 60,
    "batch_size": 32,
    "aux_weight": 0.3,
    "label_smoothing": 0.0,
    "grad_clip": None,
    "ema_decay": 0.9999,
    "ema_warmup": True,
    # augmentation
    "aug_scale": [0.08, 1.0],
    "aug_ratio": [0.75, 1.3333333],
    "aug_brightness": 0.4,
    "aug_contrast": 0.4,
    "aug_saturation": 0.4,
    "aug_lighting": 0.1,
    "aug_interpolations": ["bilinear", "area", "nearest", "bicubic"],
    "aug_hflip": 0.5,
    # execution
    "device": "auto",
    "precision": "fp32",
    "channels_last": True,
    "compile": False,
    "threads": None,
    "seed": 0,
    "work_dir": "runs/cls",
    "resume": None,
    "eval_every": 1,
    "log_every": 50,
    "max_steps_per_epoch": None,
}


def build_model(cfg: dict, num_classes: int) -> nn.Module:
    """The network named by ``cfg["backbone"]`` with ``num_classes`` outputs; ``pretrained`` weights (a local
    file) are loaded where names and shapes match (a different classifier size is re-initialised)."""
    kwargs = dict(cfg.get("backbone_kwargs") or {})
    kwargs["aux_logits"] = bool(cfg["aux_logits"])
    model = build_backbone(cfg["backbone"], num_classes=num_classes, **kwargs)
    if cfg.get("pretrained"):
        load_model_weights(model, cfg["pretrained"], strict=False)
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


def _check(cfg: dict) -> None:
    if not cfg.get("data"):
        raise ConfigError("data: set it to an image folder with train/ and val/ sub-folders (data=PATH)")
    if cfg["precision"] not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision {cfg['precision']!r}: use fp32, bf16 or fp16")
    if int(cfg["epochs"]) < 1 or int(cfg["batch_size"]) < 1:
        raise ConfigError("epochs and batch_size must be >= 1")


def train(cfg: dict) -> dict[str, Any]:
    """Train a classifier as ``cfg`` (see :data:`DEFAULTS`) says; launched under torchrun it runs data-parallel.

    Writes to ``work_dir``: ``last.pth`` (every epoch, for ``resume=``), ``best.pth`` (best validation top-1 of
    the averaged weights, or of the raw ones without averaging), ``metrics.jsonl`` (one line per epoch),
    ``curves.png`` and ``config.yaml``.

    Returns:
        ``{"best_acc1", "last": <last epoch's metrics>, "work_dir", "rank"}`` (on every rank).
    """
    cfg = {**copy.deepcopy(DEFAULTS), **cfg}
    _check(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    import torch.distributed as dist

    owner = not dist.is_initialized()  # tear down only a process group this call created
    info = init_distributed(cfg["device"])
    try:
        return _train(cfg, info)
    finally:
        if owner:
            cleanup()


def _train(cfg: dict, info) -> dict[str, Any]:
    device = resolve_device(cfg["device"], info.local_rank)
    seed_everything(int(cfg["seed"]), info.rank)
    work = Path(cfg["work_dir"])
    root = Path(cfg["data"])
    size = int(cfg["input_size"])
    # A dataset-level classes.txt (``gdet data synth --task classify`` writes one) fixes the label order, so
    # that a classifier's labels match the detection labels of the same data.
    names = read_class_file(root / "classes.txt") if (root / "classes.txt").is_file() else None
    resume_ckpt = load_checkpoint(cfg["resume"]) if cfg.get("resume") else None
    if resume_ckpt is not None and resume_ckpt.get("class_names"):
        # A resumed run keeps the label order it was trained with, whatever the folder says now.
        if names is not None and list(names) != list(resume_ckpt["class_names"]):
            raise ConfigError(f"{cfg['resume']}: its class order differs from {root / 'classes.txt'}; "
                              "resuming would permute the labels")
        names = list(resume_ckpt["class_names"])
    paths, labels, class_names = read_image_folder(root / cfg["train_split"], names)
    train_set = ClassificationDataset(paths, labels, TrainTransform(
        size, scale=cfg["aug_scale"], ratio=cfg["aug_ratio"], brightness=float(cfg["aug_brightness"]),
        contrast=float(cfg["aug_contrast"]), saturation=float(cfg["aug_saturation"]),
        lighting=float(cfg["aug_lighting"]), interpolations=cfg["aug_interpolations"], hflip=float(cfg["aug_hflip"])))
    val_loader = None
    if cfg.get("val_split"):
        vpaths, vlabels, _ = read_image_folder(root / cfg["val_split"], class_names)
        val_loader = build_loader(ClassificationDataset(vpaths, vlabels, EvalTransform(size)),
                                  batch_size=int(cfg["batch_size"]), train=False, info=info,
                                  num_workers=int(cfg["workers"]), device=device)
    loader = build_loader(train_set, batch_size=int(cfg["batch_size"]), train=True, info=info,
                          num_workers=int(cfg["workers"]), device=device, seed=int(cfg["seed"]))
    if len(loader) == 0:
        raise ConfigError(f"{root / cfg['train_split']}: fewer images ({len(train_set)}) than one batch "
                          f"({cfg['batch_size']} per process)")
    steps = len(loader) if cfg["max_steps_per_epoch"] is None else min(len(loader), int(cfg["max_steps_per_epoch"]))

    model = build_model(cfg, len(class_names)).to(device)
    channels_last = bool(cfg["channels_last"]) and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = build_ema(model, float(cfg["ema_decay"]), bool(cfg["ema_warmup"])) if cfg["ema_decay"] else None
    net = wrap_ddp(model, info, device)
    if cfg["compile"]:
        net = torch.compile(net)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps)
    scaler = build_grad_scaler(device, cfg["precision"])

    start, best = 0, -1.0
    if resume_ckpt is not None:
        ck = resume_training_state(cfg["resume"], model=model, optimizer=optimizer, scheduler=scheduler,
                                   scaler=scaler, ema=ema)
        start, best = int(ck["epoch"]), float(ck.get("best_acc1", -1.0))
    if is_main_process():
        work.mkdir(parents=True, exist_ok=True)
        from gdet.io import atomic_write
        import yaml

        with atomic_write(work / "config.yaml") as f:
            yaml.safe_dump(json.loads(json.dumps(cfg)), f, sort_keys=False)  # tuples -> lists
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg["label_smoothing"]))
    recorder = EpochRecorder(work, title=f"{cfg['backbone']} on {root.name}", best_key="best_acc1", best=best,
                             resume=start > 0,
                             meta={"task": TASK, "class_names": class_names, "backbone": cfg["backbone"],
                                   "backbone_kwargs": backbone_kwargs(cfg), "preprocessing": model.preprocessing()})
    last: dict[str, Any] = {}
    for epoch in range(start, int(cfg["epochs"])):
        set_epoch(loader, epoch)
        t0 = time.perf_counter()
        tr = train_one_epoch(net, loader, optimizer, scheduler, device, scaler=scaler, precision=cfg["precision"],
                             ema=ema, loss_fn=loss_fn, aux_weight=float(cfg["aux_weight"]),
                             log_every=int(cfg["log_every"]), prepare=Normalizer(model),
                             channels_last=channels_last, grad_clip=cfg["grad_clip"], max_steps=steps,
                             epoch=epoch, desc=f"epoch {epoch + 1}/{cfg['epochs']}")
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": tr["lr"], "train_loss": tr["loss"],
                               "train_acc1": tr["acc1"], "train_images_per_s": tr["images_per_s"]}
        is_eval = val_loader is not None and ((epoch + 1) % max(int(cfg["eval_every"]), 1) == 0
                                              or epoch + 1 == int(cfg["epochs"]))
        if is_eval:
            v = evaluate(model, val_loader, device, precision=cfg["precision"], channels_last=channels_last)
            row.update(val_loss=v["loss"], val_acc1=v["acc1"], val_acc5=v["acc5"])
            score = v["acc1"]
            if ema is not None:
                ve = evaluate(ema.module, val_loader, device, precision=cfg["precision"],
                              channels_last=channels_last, desc="val (averaged)")
                row.update(ema_val_loss=ve["loss"], ema_val_acc1=ve["acc1"], ema_val_acc5=ve["acc5"])
                score = ve["acc1"]
        else:
            score = tr["acc1"] if val_loader is None else -1.0
        row["time"] = time.perf_counter() - t0
        recorder.record(row, epoch=epoch + 1, config=cfg, model=model, optimizer=optimizer, scheduler=scheduler,
                        scaler=scaler, ema=ema, score=score)
        last = row
    return {"best_acc1": recorder.best, "last": last, "work_dir": str(work), "rank": info.rank}
