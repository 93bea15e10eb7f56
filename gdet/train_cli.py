"""``gdet train cls|det|multibox --config FILE [KEY=VALUE ...]``: one front door for every training task.

Each task module keeps a ``DEFAULTS`` dict (every config key) and ``train(cfg) -> dict``; under ``torchrun`` the
same command trains data-parallel (``torchrun --nproc_per_node=N -m gdet.cli train det --config ...``).
"""
from __future__ import annotations

import importlib
import os

import click

from gdet.config import apply_overrides, load_config
from gdet.engine import cleanup

# task -> (module with DEFAULTS and train(cfg), what it trains)
TASKS: dict[str, tuple[str, str]] = {
    "cls": ("gdet.classification.train", "an image classifier"),
    "det": ("gdet.detection.train", "an R-CNN detector"),
    "multibox": ("gdet.proposals.multibox_train", "a MultiBox proposal network"),
}

def task_defaults(task: str) -> dict:
    """Every config key of a training task with its default value."""
    mod = importlib.import_module(TASKS[task][0])
    return mod.DEFAULTS


def run_training(task: str, config: str | None, overrides) -> dict:
    """Read the config (or the defaults alone), apply ``KEY=VALUE`` overrides and train.

    Returns:
        the task's ``train`` result dict (``work_dir`` and its best validation figure among others).
    """
    mod = importlib.import_module(TASKS[task][0])
    defaults = task_defaults(task)
    cfg = load_config(config, list(overrides), defaults) if config else apply_overrides(defaults, list(overrides))
    try:
        result = mod.train(cfg) or {}
    finally:
        cleanup()  # the torchrun process group, if any
    if result.get("rank", int(os.environ.get("RANK", "0"))) == 0:  # torchrun sets RANK; print once
        where = f"checkpoints in {result.get('work_dir', '?')}"
        if result.get("best_score") is not None:
            name, value = result.get("score_name", "score"), result["best_score"]
            if name == "neg_train_loss":
                name, value = "(lowest) train_loss", -value
            where = f"best {name} {value:.4f} (epoch {result.get('best_epoch')}); {where}"
        click.echo(where)
    return result


def _make(task: str) -> click.Command:
    module, what = TASKS[task]

    @click.command(task, context_settings={"help_option_names": ["-h", "--help"]},
                   help=f"Train {what}; OVERRIDES are KEY=VALUE pairs applied over the config "
                        f"(every key: {module}.DEFAULTS).")
    @click.option("--config", type=click.Path(dir_okay=False), default=None,
                  help="YAML config (flat; at most one level of base:); without it, the defaults.")
    @click.argument("overrides", nargs=-1)
    def cmd(config, overrides):
        run_training(task, config, overrides)

    return cmd


@click.group("train", context_settings={"help_option_names": ["-h", "--help"]})
def train():
    """Train a model: gdet train cls|det|multibox --config FILE [KEY=VALUE ...] (data-parallel under torchrun)."""


train_cls = _make("cls")
train_det = _make("det")
train_multibox = _make("multibox")
for _cmd in (train_cls, train_det, train_multibox):
    train.add_command(_cmd)
