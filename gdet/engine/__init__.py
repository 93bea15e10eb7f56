"""Training infrastructure shared by classification, MultiBox and detection: one loop for every task.

Trainer (``trainer``): a task subclasses :class:`Task` (``setup`` -> model and loaders, ``train_batches``,
``loss`` -> a dict of named scalars whose ``loss*`` entries are summed, ``evaluate`` -> metrics and the score for
``best.pth``) and calls :func:`fit(task, cfg) <fit>`, which does devices and DDP, optimizer, schedule,
GradScaler, Polyak averaging, exact resume, ``best.pth``/``last.pth``, ``metrics.jsonl``, ``curves.png``,
TensorBoard, progress and teardown. :data:`ENGINE_DEFAULTS` / :data:`ENGINE_CHECKS` are the shared keys and
their ranges.

Checkpoints (``checkpoint``): ``save_checkpoint``, ``load_checkpoint``, ``load_model_weights``,
``load_start_weights`` (counted, strict unless asked); ``training_state(...)`` / ``save_training_state(path,
...)`` and ``resume_training_state(path, model=, optimizer=, scheduler=, scaler=, ema=)`` for exact resume.

Optimisation (``optim``, ``ema``): ``build_optimizer(cfg, model)`` (SGD momentum 0.9 / AdamW, no decay on biases
and norms), ``build_scheduler(cfg, optimizer, steps_per_epoch)`` (per-iteration LambdaLR: step — the paper's
0.96 every 8 epochs —, multistep, cosine, constant; linear warm-up), ``build_ema(model, decay)``.

Pieces (``loop``, ``loader``): ``move_to_device``, ``compute_loss`` (aux heads x 0.3), ``build_grad_scaler``,
``topk_correct``; ``build_loader(dataset, batch_size=, train=, info=, ...)`` (DistributedSampler /
ShardSampler, pinned memory), ``set_epoch``.

Distributed, devices, logs: ``init_distributed`` -> ``DistInfo``, ``wrap_ddp``, ``unwrap_model``,
``reduce_sum``, ``all_gather_objects``, ``barrier``, ``is_main_process``, ``seed_everything``; ``resolve_device``,
``autocast``; ``MetricLogger`` (JSONL), ``plot_curves`` (PNG), ``progress`` (tqdm on rank 0), ``erase_on_error``.
"""
from gdet.engine.checkpoint import (load_checkpoint, load_model_weights, load_start_weights, resume_training_state,
                                    rng_state, save_checkpoint, save_training_state, set_rng_state, training_state)
from gdet.engine.device import autocast, resolve_device
from gdet.engine.distributed import (DistInfo, all_gather_objects, barrier, cleanup, init_distributed,
                                     is_main_process, reduce_sum, seed_everything, unwrap_model,
                                     wrap_ddp)
from gdet.engine.ema import EmaUpdate, build_ema, ema_state, load_ema_state
from gdet.engine.loader import ShardSampler, build_loader, set_epoch
from gdet.engine.logger import MetricLogger, erase_on_error, plot_curves, progress
from gdet.engine.loop import build_grad_scaler, compute_loss, move_to_device, topk_correct
from gdet.engine.optim import OPTIM_DEFAULTS, LrSchedule, build_optimizer, build_scheduler, param_groups

__all__ = [
    "DistInfo",
    "ENGINE_CHECKS",
    "ENGINE_DEFAULTS",
    "EmaUpdate",
    "LrSchedule",
    "MetricLogger",
    "OPTIM_DEFAULTS",
    "Run",
    "ShardSampler",
    "Task",
    "TrainOptions",
    "all_gather_objects",
    "autocast",
    "barrier",
    "build_ema",
    "build_grad_scaler",
    "build_loader",
    "build_optimizer",
    "build_scheduler",
    "cleanup",
    "compute_loss",
    "ema_state",
    "erase_on_error",
    "fit",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_ema_state",
    "load_model_weights",
    "load_start_weights",
    "move_to_device",
    "param_groups",
    "plot_curves",
    "progress",
    "reduce_sum",
    "resolve_device",
    "resume_training_state",
    "rng_state",
    "save_checkpoint",
    "save_training_state",
    "seed_everything",
    "set_epoch",
    "set_rng_state",
    "topk_correct",
    "train_one_epoch",
    "training_state",
    "unwrap_model",
    "wrap_ddp",
]


def __getattr__(name: str):
    # The trainer imports gdet.config and the backbones; load it on first use so that light users of the engine
    # (checkpoint reading in inference) do not pay for it.
    if name in ("ENGINE_CHECKS", "ENGINE_DEFAULTS", "Run", "Task", "TrainOptions", "fit", "train_one_epoch"):
        from gdet.engine import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'gdet.engine' has no attribute {name!r}")
