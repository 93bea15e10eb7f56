"""MultiBox training: a plain function over gdet's engine (AMP, DDP under torchrun, exact resume, EMA)."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gdet.engine import (EpochRecorder, autocast, build_ema, build_grad_scaler, build_loader, build_optimizer,
                         build_scheduler, cleanup, init_distributed, is_main_process, move_to_device,
                         optimizer_step, progress, reduce_sum, resolve_device, resume_training_state,
                         seed_everything, set_epoch, wrap_ddp)
from gdet.engine.optim import OPTIM_DEFAULTS
from gdet.errors import ConfigError
from gdet.proposals.multibox import (HEADS, TASK, MultiBox, build_multibox, build_trunk, encode_targets,
                                     grid_priors, image_to_input, kmeans_priors, multibox_loss, postprocess)

# Every key a MultiBox config may set (configs/multibox_*.yaml); README.md (proposals section) explains them.
DEFAULTS: dict[str, Any] = {
    # data: anything gdet.data.load_detection_set reads (VOC root, COCO json, `gdet data synth` folder)
    "data": None,
    "train_split": "train",
    "val_split": "val",
    "val_data": None,  # validate on another dataset's val_split (default: data)
    "workers": 2,
    # network
    "backbone": "googlenet",
    "backbone_kwargs": {},
    "backbone_weights": None,
    "input_size": 224,
    "head": "fc",  # fc: Erhan et al.'s fully connected head; conv: convolutional priors (Szegedy et al. 2014)
    "num_priors": 200,  # fc head: k-means priors
    "anchors": 9,  # conv head: k-means box shapes per feature-map cell
    "match_iou": None,  # also match priors with IoU >= this to a ground truth (bipartite matches only if None)
    "hidden": 256,
    "grid": 4,  # fc head: pooled grid side
    "dropout": 0.0,
    "alpha": 0.3,
    "hflip": 0.5,
    # optimisation (gdet.engine.build_optimizer / build_scheduler keys)
    **copy.deepcopy(OPTIM_DEFAULTS),
    "epochs": 30,
    "batch_size": 32,
    "grad_clip": 10.0,
    "ema_decay": 0.0,
    # evaluation: recall at IoU 0.5 of the top-k boxes on the val split
    "eval_top_k": 100,
    "nms_iou": 0.7,
    "eval_max_images": None,
    # execution
    "device": "auto",
    "precision": "fp32",
    "threads": None,
    "seed": 0,
    "work_dir": "runs/multibox",
    "resume": None,
    "eval_every": 1,
    "log_every": 20,
    "max_steps_per_epoch": None,
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
        from gdet.proposals.compute import read_rgb

        r = self.records[i]
        image = image_to_input(read_rgb(r.path), self.size)
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


def _check(cfg: dict) -> None:
    if not cfg.get("data"):
        raise ConfigError("data: set it to a detection dataset (data=PATH)")
    if cfg["precision"] not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision {cfg['precision']!r}: use fp32, bf16 or fp16")
    if int(cfg["epochs"]) < 1 or int(cfg["batch_size"]) < 1 or int(cfg["num_priors"]) < 1 or int(cfg["anchors"]) < 1:
        raise ConfigError("epochs, batch_size, num_priors and anchors must be >= 1")
    if cfg["head"] not in HEADS:
        raise ConfigError(f"head {cfg['head']!r}: use one of {', '.join(HEADS)}")
    if cfg["match_iou"] is not None and (not isinstance(cfg["match_iou"], (int, float))
                                         or not 0.0 < float(cfg["match_iou"]) <= 1.0):
        raise ConfigError(f"match_iou {cfg['match_iou']!r}: use a value in (0, 1] or null")


def train(cfg: dict) -> dict[str, Any]:
    """Train MultiBox as ``cfg`` (see :data:`DEFAULTS`) says; data-parallel under torchrun.

    Writes to ``work_dir``: ``last.pth`` (every epoch; ``resume=``), ``best.pth`` (best val recall),
    ``metrics.jsonl``, ``curves.png``, ``config.yaml``.

    Returns:
        ``{"best_recall", "last", "work_dir"}``.
    """
    cfg = {**copy.deepcopy(DEFAULTS), **cfg}
    _check(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    info = init_distributed(cfg["device"])
    try:
        return _train(cfg, info)
    finally:
        cleanup()


def _train(cfg: dict, info) -> dict[str, Any]:
    from gdet.data.dataset import load_detection_set

    device = resolve_device(cfg["device"], info.local_rank)
    seed_everything(int(cfg["seed"]), info.rank)
    work = Path(cfg["work_dir"])
    train_set = load_detection_set(cfg["data"], split=cfg["train_split"])
    boxes = torch.cat([normalised_boxes(r) for r in train_set.records])
    size = int(cfg["input_size"])
    head = {"hidden": int(cfg["hidden"]), "grid": int(cfg["grid"]), "dropout": float(cfg["dropout"]),
            "kind": str(cfg["head"]), "anchors": int(cfg["anchors"])}
    if head["kind"] == "conv":
        priors = grid_priors(boxes, feature_grid(cfg["backbone"], cfg["backbone_kwargs"], size), head["anchors"],
                             seed=int(cfg["seed"]))
    else:
        priors = kmeans_priors(boxes, int(cfg["num_priors"]), seed=int(cfg["seed"]))
    loader = build_loader(MultiBoxDataset(train_set.records, priors, size, float(cfg["hflip"]), cfg["match_iou"]),
                          batch_size=int(cfg["batch_size"]), train=True, info=info, num_workers=int(cfg["workers"]),
                          device=device, seed=int(cfg["seed"]), collate_fn=collate)
    if len(loader) == 0:
        raise ConfigError(f"{cfg['data']}: fewer training images ({len(train_set)}) than one batch "
                          f"({cfg['batch_size']} per process)")
    val_loader = None
    if cfg.get("val_split"):
        val_records = load_detection_set(cfg.get("val_data") or cfg["data"], split=cfg["val_split"]).records
        if cfg.get("eval_max_images"):
            val_records = val_records[: int(cfg["eval_max_images"])]
        val_loader = build_loader(MultiBoxDataset(val_records, priors, size, match_iou=cfg["match_iou"]),
                                  batch_size=int(cfg["batch_size"]),
                                  train=False, info=info, num_workers=int(cfg["workers"]), device=device,
                                  collate_fn=collate)
    steps = len(loader) if cfg["max_steps_per_epoch"] is None else min(len(loader), int(cfg["max_steps_per_epoch"]))

    model = build_multibox(backbone=cfg["backbone"], priors=priors, backbone_kwargs=cfg["backbone_kwargs"],
                           backbone_weights=cfg["backbone_weights"], **head).to(device)
    ema = build_ema(model, float(cfg["ema_decay"])) if cfg["ema_decay"] else None
    net = wrap_ddp(model, info, device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps)
    scaler = build_grad_scaler(device, cfg["precision"])
    start, best = 0, -1.0
    if cfg.get("resume"):
        ck = resume_training_state(cfg["resume"], model=model, optimizer=optimizer, scheduler=scheduler,
                                   scaler=scaler, ema=ema)
        start, best = int(ck["epoch"]), float(ck.get("best_recall", -1.0))
    if is_main_process():
        import yaml

        from gdet.io import atomic_write

        work.mkdir(parents=True, exist_ok=True)
        with atomic_write(work / "config.yaml") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
    recorder = EpochRecorder(work, title=f"MultiBox ({cfg['backbone']}, {head['kind']} head)",
                             best_key="best_recall", best=best, resume=start > 0,
                             meta={"task": TASK, "backbone": cfg["backbone"],
                                   "backbone_kwargs": dict(cfg["backbone_kwargs"]), "priors": priors, "head": head,
                                   "input_size": size, "preprocessing": model.backbone.preprocessing()})
    last: dict[str, Any] = {}
    for epoch in range(start, int(cfg["epochs"])):
        set_epoch(loader, epoch)
        t0 = time.perf_counter()
        tr = train_one_epoch(net, model, loader, optimizer, scheduler, device, cfg, steps, epoch, scaler, ema)
        row: dict[str, Any] = {"epoch": epoch + 1, **tr}
        is_eval = val_loader is not None and ((epoch + 1) % max(int(cfg["eval_every"]), 1) == 0
                                              or epoch + 1 == int(cfg["epochs"]))
        # Without a val split the lowest training loss is "best"; with one, only evaluated epochs compete.
        score = -tr["train_loss"] if val_loader is None else None
        if is_eval:
            v = evaluate(ema.module if ema is not None else model, val_loader, device, cfg)
            row.update(v)
            score = v[f"val_recall@{cfg['eval_top_k']}"]
        row["time"] = time.perf_counter() - t0
        recorder.record(row, epoch=epoch + 1, config=cfg, model=model, optimizer=optimizer, scheduler=scheduler,
                        scaler=scaler, ema=ema, score=score)
        last = row
    return {"best_recall": recorder.best, "last": last, "work_dir": str(work)}


def train_one_epoch(net, model: MultiBox, loader, optimizer, scheduler, device, cfg, steps, epoch, scaler, ema):
    net.train()
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # loss, loc, conf sums, images
    bar = progress(total=steps, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False)
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    for step, (images, targets) in enumerate(loader, 1):
        images = move_to_device(images, device)
        tb, tm = move_to_device(targets["boxes"], device), move_to_device(targets["matched"], device)
        x = model.normalize(images.float() / 255.0)
        with autocast(device, cfg["precision"]):
            boxes, logits = net(x)
        loss, parts = multibox_loss(boxes, logits, tb, tm, float(cfg["alpha"]))
        optimizer_step(loss, optimizer, scaler=scaler, grad_clip=cfg["grad_clip"], parameters=params)
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        n = images.shape[0]
        stats += torch.stack([loss.detach().double() * n, parts["loc"].double() * n, parts["conf"].double() * n,
                              torch.tensor(float(n), dtype=torch.float64, device=device)])
        if step % max(int(cfg["log_every"]), 1) == 0:
            bar.set_postfix(loss=f"{float(stats[0] / stats[3]):.4f}")
        bar.update(1)
        if step >= steps:
            break
    bar.close()
    total = reduce_sum(stats)
    c = float(total[3].clamp(min=1))
    if not np.isfinite(float(total[0])):
        from gdet.errors import GdetError

        raise GdetError(f"training diverged at epoch {epoch + 1}; lower the lr")
    return {"lr": float(optimizer.param_groups[0]["lr"]), "train_loss": float(total[0]) / c,
            "train_loc": float(total[1]) / c, "train_conf": float(total[2]) / c,
            "train_images_per_s": float(total[3]) / max(time.perf_counter() - t0, 1e-9)}


@torch.no_grad()
def evaluate(model: MultiBox, loader, device, cfg) -> dict[str, float]:
    """Validation loss and recall at IoU 0.5 of the top ``eval_top_k`` boxes (after NMS), over all ranks."""
    from torchvision.ops import box_iou

    model.eval()
    k = int(cfg["eval_top_k"])
    stats = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, images, hits, objects
    for images, targets in progress(loader, desc="val", leave=False):
        images = move_to_device(images, device)
        x = model.normalize(images.float() / 255.0)
        with autocast(device, cfg["precision"]):
            boxes, logits = model(x)
        loss, _ = multibox_loss(boxes, logits, targets["boxes"].to(device), targets["matched"].to(device),
                                float(cfg["alpha"]))
        n = images.shape[0]
        hits = objects = 0
        for b, lg, gt, wh in zip(boxes, logits, targets["gt"], targets["size"]):
            w, h = int(wh[0]), int(wh[1])
            pb, _ = postprocess(b, lg, w, h, top_k=k, nms_iou=float(cfg["nms_iou"]))
            g = gt.to(device) * torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
            objects += g.shape[0]
            if g.shape[0] and pb.shape[0]:
                hits += int((box_iou(g, pb).amax(1) >= 0.5).sum())
        stats += torch.tensor([float(loss) * n, n, hits, objects], dtype=torch.float64, device=device)
    total = reduce_sum(stats)
    return {"val_loss": float(total[0] / total[1].clamp(min=1)),
            f"val_recall@{k}": float(total[2] / total[3].clamp(min=1))}
