"""Training infrastructure shared by classification, MultiBox and detection: checkpoints, distributed
set-up, metric logs and curves, progress bars, devices and mixed precision."""
from gdet.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from gdet.engine.distributed import DistInfo, barrier, init_distributed, is_main_process, reduce_mean
from gdet.engine.logger import MetricLogger, plot_curves, progress
from gdet.engine.device import autocast, resolve_device

__all__ = [
    "DistInfo",
    "MetricLogger",
    "autocast",
    "barrier",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_model_weights",
    "plot_curves",
    "progress",
    "reduce_mean",
    "resolve_device",
    "save_checkpoint",
]
