"""The one training loop of gdet: a :class:`Task` brings its model, data, loss and evaluation; :func:`fit` brings
devices, DDP, optimizer, schedule, AMP, Polyak averaging, exact resume, checkpoints, logs and curves."""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import yaml
from torch import Tensor, nn

from gdet.backbones import build_backbone, list_backbones
from gdet.backbones.registry import get_backbone_builder
from gdet.config import interval, number, one_of
from gdet.engine.checkpoint import load_checkpoint, resume_training_state, save_checkpoint, training_state
from gdet.engine.device import autocast, resolve_device
from gdet.engine.distributed import (DistInfo, barrier, cleanup, init_distributed, is_main_process, reduce_sum,
                                     seed_everything, wrap_ddp)
from gdet.engine.ema import build_ema
from gdet.engine.loader import set_epoch
from gdet.engine.logger import MetricLogger, plot_curves, progress
from gdet.engine.loop import build_grad_scaler
from gdet.engine.optim import (OPTIM_DEFAULTS, SCHEDULES, build_optimizer, build_scheduler, optim_value,
                               set_schedule_position)
from gdet.errors import CheckpointError, GdetError
from gdet.io import atomic_write, remove_stale_temps

# The keys every trainer shares, with one name each (a task's DEFAULTS start from these and may change values).
ENGINE_DEFAULTS: dict[str, Any] = {
    **copy.deepcopy(OPTIM_DEFAULTS),
    "epochs": 1,
    "batch_size": 32,              # per process (DDP: the global batch is batch_size x processes)
    "workers": 0,                  # DataLoader worker processes
    "weights": None,               # start weights (a local checkpoint file; null: random initialisation)
    "weights_strict": True,        # refuse start weights that fit only part of the network
    "grad_clip": None,             # max gradient norm (null: no clipping)
    "ema_decay": 0.0,              # Polyak averaging of the weights (0: off)
    "ema_warmup": True,
    "device": "auto",
    "precision": "fp32",           # fp32 | bf16 | fp16 (autocast; fp16 uses a GradScaler on CUDA)
    "channels_last": False,        # NHWC tensors on CUDA
    "compile": False,              # torch.compile the network
    "threads": None,               # torch CPU threads (null: torch's default)
    "seed": 0,
    "work_dir": "runs/train",
    "resume": None,                # a last.pth to continue exactly from
    "eval_every": 1,               # epochs between evaluations (0: never; the last epoch is always evaluated)
    "log_every": 20,               # steps between progress-bar updates (each one synchronises the device)
    "max_steps_per_epoch": None,   # cap on the steps of an epoch (smoke runs)
    "tensorboard": False,          # also write TensorBoard event files beside metrics.jsonl
}

# Range of every shared key; a task adds its own keys to a copy (see gdet.config.check_config).
ENGINE_CHECKS = {
    "optimizer": one_of("sgd", "adamw"),
    "lr": number(gt=0),
    "momentum": interval(0, 1, hi_open=True),
    "weight_decay": number(ge=0),
    "lr_schedule": one_of(*SCHEDULES),
    "lr_step_epochs": number(ge=1),
    "lr_gamma": interval(0, 1, lo_open=True),
    "min_lr": number(ge=0),
    "warmup_epochs": number(ge=0),
    "warmup_factor": interval(0, 1, lo_open=True),
    "epochs": number(ge=1, integer=True),
    "batch_size": number(ge=1, integer=True),
    "workers": number(ge=0, integer=True),
    "grad_clip": number(gt=0, null=True),
    "ema_decay": interval(0, 1, hi_open=True),
    "device": lambda v, cfg: None if isinstance(v, str) else f"must be a device name (auto, cpu, cuda, cuda:N), got {v!r}",
    "precision": one_of("fp32", "bf16", "fp16"),
    "threads": number(ge=1, integer=True, null=True),
    "seed": number(ge=0, integer=True),
    "eval_every": number(ge=0, integer=True),
    "log_every": number(ge=1, integer=True),
    "max_steps_per_epoch": number(ge=1, integer=True, null=True),
}

_FILES = ("last.pth", "best.pth", "metrics.jsonl", "curves.png", "config.yaml")


@dataclass
class TrainOptions:
    """The engine's keys, read once from the config (nothing reads the config dict inside the loop)."""

    work_dir: Path
    epochs: int
    device: str
    precision: str
    seed: int
    resume: str | None
    eval_every: int
    log_every: int
    max_steps_per_epoch: int | None
    ema_decay: float
    ema_warmup: bool
    grad_clip: float | None
    compile: bool
    channels_last: bool
    threads: int | None
    tensorboard: bool

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainOptions":
        g = lambda k: cfg.get(k, ENGINE_DEFAULTS[k])  # noqa: E731
        opt = lambda k, t: None if g(k) is None else t(g(k))  # noqa: E731
        return cls(work_dir=Path(g("work_dir")), epochs=int(g("epochs")), device=str(g("device")),
                   precision=str(g("precision")), seed=int(g("seed")), resume=opt("resume", str),
                   eval_every=int(g("eval_every")), log_every=max(int(g("log_every")), 1),
                   max_steps_per_epoch=opt("max_steps_per_epoch", int), ema_decay=float(g("ema_decay") or 0.0),
                   ema_warmup=bool(g("ema_warmup")), grad_clip=opt("grad_clip", float) or None,
                   compile=bool(g("compile")), channels_last=bool(g("channels_last")), threads=opt("threads", int),
                   tensorboard=bool(g("tensorboard")))


@dataclass
class Run:
    """What a task sees of a run: its config, the device, the (wrapped) network and the training objects."""

    cfg: dict
    opts: TrainOptions
    info: DistInfo
    device: torch.device
    resume_ckpt: dict | None = None
    model: nn.Module | None = None       # the bare network (what checkpoints hold)
    net: nn.Module | None = None         # the network the step runs: DDP- and/or compile-wrapped
    ema: Any = None                      # AveragedModel or None
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None

    @property
    def work_dir(self) -> Path:
        return self.opts.work_dir

    @property
    def channels_last(self) -> bool:
        """NHWC only pays on CUDA (on CPU it is slower)."""
        return self.opts.channels_last and self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return self.opts.precision

    def eval_model(self) -> nn.Module:
        """The averaged weights when averaging is on, else the raw ones."""
        return self.ema.module if self.ema is not None else self.model


class Task:
    """What a trainer supplies to :func:`fit`. Subclasses implement :meth:`setup`, :meth:`train_batches`,
    :meth:`loss` and (when they validate) :meth:`evaluate`; only they read their config keys.

    Attributes:
        name: the checkpoint's ``task`` key (``classify``, ``detect``, ``multibox``).
        score_name: the metric that selects ``best.pth`` (higher is better), e.g. ``val_acc1``.
        unit: what :meth:`count` counts, for the throughput column (``train_<unit>_per_s``).
        hidden: row keys logged but not printed.
        loss_keys: config keys that define what the training loss measures; without validation the lowest
            training loss selects ``best.pth``, so a resume that changes one of them restarts that selection.
    """

    name = "task"
    score_name = "score"
    unit = "images"
    hidden: tuple[str, ...] = ()
    loss_keys: tuple[str, ...] = ()

    def __init__(self, cfg: dict):
        self.cfg = cfg

    def title(self) -> str:
        return self.name

    def setup(self, run: Run) -> nn.Module:
        """Read the data, build the loaders and return the network (on the CPU). ``run.resume_ckpt`` is the
        checkpoint being resumed (its weights are loaded afterwards, so start weights need not be read)."""
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        """Batches per epoch; default: ``len(self.loader)`` (a task that trains from one DataLoader sets it)."""
        return len(self.loader)

    def train_batches(self, epoch: int) -> Iterable:
        """The batches of epoch ``epoch`` (0-based); their order must depend only on the seed and the epoch.
        Default: ``self.loader`` with its sampler set to the epoch."""
        set_epoch(self.loader, epoch)
        return self.loader

    def loss(self, net: nn.Module, batch: Any, run: Run) -> dict[str, Tensor]:
        """Forward one batch (under autocast) and return named scalars: every ``loss*`` entry is part of the total
        that is minimised, the others (e.g. ``acc1``) are only logged. All are averaged over the epoch."""
        raise NotImplementedError

    def count(self, batch: Any) -> int:
        """Samples in ``batch`` (for the throughput)."""
        return len(batch[0])

    @property
    def can_evaluate(self) -> bool:
        return False

    def evaluate(self, run: Run) -> tuple[dict[str, Any], float | None]:
        """Validation metrics (over all ranks) and the score that competes for ``best.pth``."""
        raise NotImplementedError

    def checkpoint_meta(self) -> dict[str, Any]:
        """Keys every checkpoint of this task carries (task, class names, backbone, preprocessing, ...)."""
        return {"task": self.name}

    def finish(self, run: Run, result: dict[str, Any]) -> None:
        """Called once after the last epoch (e.g. to export an inference copy)."""

    def board_images(self) -> dict[str, Any]:
        """Pictures of the last evaluation for TensorBoard, ``tag -> uint8 [H, W, 3]`` (asked only when
        ``tensorboard: true``, on rank 0)."""
        return {}


def remove_orphan_temps(folder: Path, names: Iterable[str] = _FILES) -> list[Path]:
    """Delete the temp files that an atomic write killed half-way left beside ``names`` in ``folder``.
    Returns the removed paths."""
    return [p for name in names for p in remove_stale_temps(folder, name)]


def _save_config(cfg: dict, path: Path) -> None:
    with atomic_write(path) as f:
        yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), f, sort_keys=False)  # tuples -> lists


def _finite_weights(*modules: nn.Module | None) -> bool:
    tensors = [t for m in modules if m is not None for t in m.state_dict().values() if torch.is_floating_point(t)]
    if not tensors:
        return True
    return bool(torch.isfinite(torch.stack([t.detach().float().norm() for t in tensors])).all())


def train_one_epoch(task: Task, run: Run, epoch: int, steps: int) -> dict[str, float]:
    """One pass over the task's batches: forward (autocast), loss dict, backward, (unscale, clip), step,
    schedule, averaging. Returns the epoch means of the loss dict (``train_``-prefixed, over all ranks),
    ``lr`` and ``train_<unit>_per_s``. A non-finite loss stops with :class:`GdetError`."""
    opts, net, optimizer, scaler = run.opts, run.net, run.optimizer, run.scaler
    net.train()
    params = [p for p in run.model.parameters() if p.requires_grad] if opts.grad_clip else None
    keys: list[str] = []
    sums: Tensor | None = None
    n = 0
    bar = progress(total=steps, desc=f"epoch {epoch + 1}/{opts.epochs}", leave=False)
    t0 = time.perf_counter()
    step, lr = 0, float(optimizer.param_groups[0]["lr"])
    try:
        for step, batch in enumerate(task.train_batches(epoch), 1):
            lr = float(optimizer.param_groups[0]["lr"])  # this step's; the scheduler moves it after the step
            with autocast(run.device, opts.precision):
                parts = task.loss(net, batch, run)
            losses = [v for k, v in parts.items() if k.startswith("loss")]
            if not losses:
                raise GdetError(f"task {task.name!r}: its loss dict has no 'loss*' entry")
            total = losses[0] if len(losses) == 1 else torch.stack([v.float() for v in losses]).sum()
            if scaler is not None:
                scaler.scale(total).backward()
                if params is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                total.backward()
                if params is not None:
                    torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if run.scheduler is not None:
                run.scheduler.step()
            if run.ema is not None:
                run.ema.update_parameters(run.model)
            with torch.no_grad():
                if not keys:
                    keys = ["loss"] + [k for k in parts if k != "loss"]
                vec = torch.stack([total.detach().double()] + [parts[k].detach().double() for k in keys[1:]])
                if scaler is not None:  # the scaler skips overflowing fp16 steps; so do the statistics
                    vec = torch.where(torch.isfinite(vec), vec, torch.zeros_like(vec))
                sums = vec if sums is None else sums + vec
            n += task.count(batch)
            if step % opts.log_every == 0 or step == steps:
                cur = float(sums[0]) / step  # .item() synchronises the device, so only every log_every steps
                if not math.isfinite(cur):
                    raise GdetError(f"training diverged at epoch {epoch + 1} step {step} (loss {cur}); nothing of "
                                    "this epoch was saved; lower lr or set grad_clip")
                bar.set_postfix(loss=f"{cur:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if step >= steps:
                break
    except BaseException:
        bar.close()  # leave=False: erased, so that the command's one-line error starts its own line
        raise
    bar.close()
    elapsed = time.perf_counter() - t0
    if sums is None:
        raise GdetError(f"task {task.name!r}: epoch {epoch + 1} has no training batch")
    totals = reduce_sum(torch.cat([sums, torch.tensor([float(step), float(n)], dtype=torch.float64,
                                                        device=sums.device)]))
    n_steps, n_samples = float(totals[-2]), float(totals[-1])
    row = {f"train_{k}": float(totals[i]) / n_steps for i, k in enumerate(keys)}
    row["lr"] = lr  # the learning rate of the epoch's last step, not the next epoch's
    row[f"train_{task.unit}_per_s"] = n_samples / max(elapsed, 1e-9)
    return row


class _Board:
    """TensorBoard event files beside metrics.jsonl (rank 0)."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GdetError("tensorboard: the 'tensorboard' package is not installed "
                            "(pip install tensorboard, or set tensorboard=false)") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, row: dict[str, Any], epoch: int) -> None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch" and math.isfinite(v):
                group = "train" if k.startswith("train_") or k == "lr" else "val" if "val" in k else "misc"
                self.writer.add_scalar(f"{group}/{k}", v, epoch)
        self.writer.flush()

    def images(self, images: dict[str, Any], epoch: int) -> None:
        for tag, image in images.items():
            self.writer.add_image(tag, image, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _best_restarts(ck: dict, cfg: dict, score_name: str, loss_keys: Sequence[str]) -> str | None:
    """Why a resumed run's earlier best score no longer competes (None: it does): ``best.pth`` now follows
    another score, or, selected by the training loss, one of ``loss_keys`` changed what that loss measures."""
    old_name = ck.get("score_name")
    if old_name and old_name != score_name:
        return f"the score is now {score_name}, not {old_name}"
    if score_name == "neg_train_loss":
        old = ck.get("config") or {}
        changed = [f"{k} {old[k]} → {cfg.get(k)}" for k in loss_keys if k in old and old[k] != cfg.get(k)]
        if changed:
            return f"{', '.join(changed)} changes what the training loss measures"
    return None


def _repair_outputs(work: Path, ckpt: dict, resume_path: str | None) -> None:
    """Make a resumed run's folder agree with the checkpoint it resumes from: metrics rows up to its epoch are
    rewritten from its stored history (a kill may have lost the last row or left later ones), and ``best.pth``
    is re-derived when the checkpoint is itself the best epoch but ``best.pth`` does not hold it."""
    history = ckpt.get("history")
    if history is not None:
        with atomic_write(work / "metrics.jsonl", encoding="utf-8") as f:
            for row in history:
                f.write(json.dumps(row) + "\n")
    best_epoch = ckpt.get("best_epoch")
    if best_epoch is not None and int(best_epoch) == int(ckpt["epoch"]):
        best = work / "best.pth"
        held = None
        if best.is_file():
            try:
                held = load_checkpoint(best).get("epoch")
            except CheckpointError:
                held = None
        if held != best_epoch:
            save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "format_version")}, best)
            print(f"resume: best.pth re-derived from {resume_path} (epoch {best_epoch})", flush=True)


def fit(task: Task, cfg: dict) -> dict[str, Any]:
    """Train ``task`` as ``cfg`` says (its keys: :data:`ENGINE_DEFAULTS` plus the task's). Launched under
    torchrun it runs data-parallel; the process group is torn down again only if this call created it.

    Writes to ``work_dir``: ``best.pth`` (when the epoch's score beats every earlier one), then ``last.pth`` (the
    full training state, for ``resume=``), then a row of ``metrics.jsonl``, ``curves.png``; ``config.yaml`` at the
    start. In that order a kill at any point leaves outputs that a resume from ``last.pth`` makes consistent.

    Returns:
        ``{"best_score", "best_epoch", "score_name", "last": <last epoch's row>, "work_dir", "rank"}``.
    """
    import torch.distributed as dist

    opts = TrainOptions.from_config(cfg)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    owner = not dist.is_initialized()
    info = init_distributed(opts.device)
    try:
        return _fit(task, cfg, opts, info)
    finally:
        if owner:
            cleanup()


def _changed_optim_keys(saved: dict, cfg: dict) -> list[str]:
    """``key old → new`` for each optimizer or schedule key that differs from the checkpoint's config (``epochs``
    only where it shapes the curve, i.e. under cosine)."""
    keys = [k for k in OPTIM_DEFAULTS if k != "epochs" or optim_value(cfg, "lr_schedule") == "cosine"]
    return [f"{k} {optim_value(saved, k)} → {optim_value(cfg, k)}" for k in keys
            if saved and optim_value(saved, k) != optim_value(cfg, k)]


def _fit(task: Task, cfg: dict, opts: TrainOptions, info: DistInfo) -> dict[str, Any]:
    device = resolve_device(opts.device, info.local_rank)
    seed_everything(opts.seed, info.rank)
    work = opts.work_dir
    if is_main_process():
        work.mkdir(parents=True, exist_ok=True)
        remove_orphan_temps(work)
    barrier()
    resume_ckpt = None
    if opts.resume:
        resume_ckpt = load_checkpoint(opts.resume)
        if resume_ckpt.get("optimizer") is None or "epoch" not in resume_ckpt:
            raise CheckpointError(f"{opts.resume}: not a training checkpoint (no optimizer state/epoch); "
                                  "cannot resume from it")
        if resume_ckpt.get("task") not in (None, task.name):
            raise CheckpointError(f"{opts.resume}: a {resume_ckpt.get('task')!r} checkpoint, not {task.name!r}")
        saved = resume_ckpt.get("config") or {}
        before = optim_value(saved, "optimizer")
        if saved and before != optim_value(cfg, "optimizer"):
            now = optim_value(cfg, "optimizer")
            raise CheckpointError(f"{opts.resume}: trained with optimizer {before}, not {now}; "
                                  f"resume with optimizer={before}")
    run = Run(cfg=cfg, opts=opts, info=info, device=device, resume_ckpt=resume_ckpt)
    model = task.setup(run).to(device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run.model = model
    steps = int(task.steps_per_epoch())
    if opts.max_steps_per_epoch:
        steps = min(steps, opts.max_steps_per_epoch)
    if steps < 1:
        raise GdetError(f"{task.name}: the training set gives no batch per epoch")
    run.ema = build_ema(model, opts.ema_decay, opts.ema_warmup) if opts.ema_decay else None
    run.net = wrap_ddp(model, info, device)
    if opts.compile:
        run.net = torch.compile(run.net)
    run.optimizer = build_optimizer(cfg, model)
    run.scheduler = build_scheduler(cfg, run.optimizer, steps)
    run.scaler = build_grad_scaler(device, opts.precision)

    # Without validation the lowest training loss picks best.pth; its score is then the negated loss.
    score_name = task.score_name if task.can_evaluate and opts.eval_every else "neg_train_loss"
    start, best, best_epoch, history = 0, -math.inf, None, []
    if resume_ckpt is not None:
        ck = resume_training_state(resume_ckpt, model=model, optimizer=run.optimizer, scheduler=run.scheduler,
                                   scaler=run.scaler, ema=run.ema, name=opts.resume)
        start = int(ck["epoch"])
        restart = _best_restarts(ck, cfg, score_name, task.loss_keys) if start < opts.epochs else None
        if ck.get("best_score") is not None and restart is None:
            best, best_epoch = float(ck["best_score"]), ck.get("best_epoch")
        history = list(ck.get("history") or [])
        lr_now = set_schedule_position(run.scheduler, start * steps)[0]
        if is_main_process():
            _repair_outputs(work, ck, opts.resume)
            changed = _changed_optim_keys(ck.get("config") or {}, cfg)
            if changed and start < opts.epochs:
                print(f"resume: {opts.resume}: {', '.join(changed)}; the optimizer and schedule follow the "
                      f"config (lr {lr_now:g} at epoch {start + 1})", flush=True)
            if restart:
                print(f"resume: {opts.resume}: {restart}; best.pth restarts at epoch {start + 1}", flush=True)
            if start < opts.epochs:
                print(f"resume: {opts.resume}: epoch {start} of {opts.epochs} done, continuing", flush=True)
            else:
                print(f"resume: {opts.resume}: all {opts.epochs} epochs done, nothing to train "
                      f"(set epochs= above {start} to train longer)", flush=True)
    if is_main_process():
        _save_config(cfg, work / "config.yaml")
    logger = MetricLogger(work / "metrics.jsonl", resume=start > 0)
    board = _Board(work) if opts.tensorboard and is_main_process() else None
    meta = task.checkpoint_meta()
    row: dict[str, Any] = dict(history[-1]) if history else {}  # a finished run resumed: its last epoch
    try:
        for epoch in range(start, opts.epochs):
            t0 = time.perf_counter()
            row = {"epoch": epoch + 1, **train_one_epoch(task, run, epoch, steps)}
            if not math.isfinite(row["train_loss"]) or not _finite_weights(model, run.ema):
                raise GdetError(f"training diverged at epoch {epoch + 1} (loss {row['train_loss']:.4g}, or non-finite "
                                "weights); last.pth and best.pth keep the last finite epoch; lower lr or set grad_clip")
            last_epoch = epoch + 1 == opts.epochs
            score = None
            if task.can_evaluate and opts.eval_every and ((epoch + 1) % opts.eval_every == 0 or last_epoch):
                metrics, score = task.evaluate(run)
                row.update(metrics)
            elif not task.can_evaluate or not opts.eval_every:
                score = -row["train_loss"]  # nothing validated: the lowest training loss is "best"
            row["time"] = time.perf_counter() - t0
            improved = score is not None and math.isfinite(score) and score > best
            if improved:
                best, best_epoch = float(score), epoch + 1
            history.append(row)
            ck = training_state(model=model, optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler,
                                ema=run.ema, epoch=epoch + 1, config=cfg, metrics=row, history=history,
                                score_name=score_name, best_score=best if best_epoch else None,
                                best_epoch=best_epoch, **meta)
            if is_main_process():
                # best.pth before last.pth before the row: after a kill, last.pth never claims a best epoch
                # that best.pth lacks, and a resume rewrites the rows from last.pth's history.
                if improved:
                    save_checkpoint(ck, work / "best.pth")
                save_checkpoint(ck, work / "last.pth")
                logger.log(**row)
                plot_curves(work / "metrics.jsonl", work / "curves.png", title=task.title())
                if board is not None:
                    board.log(row, epoch + 1)
                    if score is not None and task.can_evaluate and opts.eval_every:
                        board.images(task.board_images(), epoch + 1)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                               if k not in task.hidden), flush=True)
            barrier()
    finally:
        if board is not None:
            board.close()
    result = {"best_score": best if best_epoch else None, "best_epoch": best_epoch, "score_name": score_name,
              "last": row, "work_dir": str(work), "rank": info.rank}
    task.finish(run, result)
    barrier()
    return result


# ------------------------------------------------------------------------------------------- backbone checks
_PROBE_CACHE: dict[tuple, Any] = {}


def _probe_net(name: str, kwargs: dict, aux: bool | None) -> nn.Module | str:
    """A throw-away network to try inputs on (cached), or why it cannot be built."""

    if name not in list_backbones():
        return ""  # the backbone key's own check reports it
    key = (name, repr(sorted(kwargs.items())), aux)
    if key not in _PROBE_CACHE:

        try:
            kw = dict(kwargs)
            if aux is not None:
                kw["aux_logits"] = aux
            _PROBE_CACHE.clear()
            _PROBE_CACHE[key] = build_backbone(name, num_classes=2, **kw).train()
        except TypeError as e:
            import difflib
            import inspect
            import re

            m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            bad = m.group(1) if m else None
            builder = get_backbone_builder(name)
            fns = [builder]
            ret = inspect.signature(builder).return_annotation  # the class a builder passes **kwargs on to
            ret = builder.__globals__.get(ret) if isinstance(ret, str) else ret
            if inspect.isclass(ret):
                fns.append(ret.__init__)
            params: list[str] = []
            for fn in fns:
                params += [p for p in inspect.signature(fn).parameters
                           if p not in ("self", "args", "kwargs", "num_classes") and p not in params]
            close = difflib.get_close_matches(bad or "", params, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else (f" (accepted: {', '.join(params)})" if params else "")
            _PROBE_CACHE[key] = f"{name} does not accept {bad!r}{hint}" if bad else f"{name}: {e}"
        except GdetError as e:
            _PROBE_CACHE[key] = str(e)
        except (ValueError, RuntimeError) as e:
            _PROBE_CACHE[key] = f"{name}: {str(e).splitlines()[0][:120]}"
    return _PROBE_CACHE[key]


def _runs_at(net: nn.Module, size: int) -> bool:
    try:
        with torch.no_grad():
            net(torch.zeros(2, 3, size, size))
        return True
    except (RuntimeError, ValueError):
        return False


def backbone_kwargs_check(*, aux_key: str | None = "aux_logits", trunk: bool = False):
    """Check for ``backbone_kwargs``: a mapping of keyword arguments the backbone's builder accepts."""
    def check(v: Any, cfg: dict) -> str | None:
        if not isinstance(v, dict):
            return f"must be a mapping such as {{dropout: 0.4}}, got {v!r}"
        aux = False if trunk else (bool(cfg[aux_key]) if aux_key and aux_key in cfg else None)
        net = _probe_net(str(cfg.get("backbone")), v, aux)
        return (net or None) if isinstance(net, str) else None
    return check


def input_size_check(*, aux_key: str | None = "aux_logits", trunk: bool = False, minimum: int = 1):
    """Check for ``input_size``: a whole number the backbone runs at (tried once on a throw-away network); a
    too-small size names the smallest one that works."""
    def check(v: Any, cfg: dict) -> str | None:
        problem = number(ge=minimum, integer=True)(v, cfg)
        if problem:
            return problem
        kwargs = cfg.get("backbone_kwargs") or {}
        if not isinstance(kwargs, dict):
            return None  # backbone_kwargs' own check reports it
        aux = False if trunk else (bool(cfg[aux_key]) if aux_key and aux_key in cfg else None)
        net = _probe_net(str(cfg.get("backbone")), kwargs, aux)
        if isinstance(net, str) or _runs_at(net, int(v)):
            return None
        smallest = next((s for s in range(int(v) + 1, 1025) if _runs_at(net, s)), None)
        return (f"{int(v)} px is too small for {cfg.get('backbone')}"
                + (f" (the smallest input it runs at is {smallest} px)" if smallest else ""))
    return check
