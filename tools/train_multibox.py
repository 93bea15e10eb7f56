#!/usr/bin/env python
"""Train MultiBox: `python tools/train_multibox.py --config configs/multibox_synth.yaml [key=value ...]`.

Under torchrun it trains data-parallel: `torchrun --nproc_per_node 8 tools/train_multibox.py --config ...`.
Resume with `resume=WORK_DIR/last.pth`. Every key is listed in gdet/proposals/multibox_train.py (DEFAULTS).
"""
from __future__ import annotations

import sys

import click

from gdet.cli import run_guarded


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", required=True, help="YAML config (configs/multibox_*.yaml).")
@click.argument("overrides", nargs=-1)
def main(config, overrides):
    """Train a MultiBox proposal network; overrides are key=value."""
    from gdet.config import load_config
    from gdet.proposals.multibox_train import DEFAULTS, train

    cfg = load_config(config, overrides, defaults=DEFAULTS)
    res = train(cfg)
    click.echo(f"best val recall: {res['best_recall']:.4f}  ({res['work_dir']})")


if __name__ == "__main__":
    run_guarded(main.main, standalone_mode=True)
    sys.exit(0)
