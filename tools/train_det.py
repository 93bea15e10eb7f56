#!/usr/bin/env python
"""Fine-tune an R-CNN detector: `tools/train_det.py --config configs/det_*.yaml [key=value ...]`.

Multi-GPU: `torchrun --nproc_per_node=N tools/train_det.py --config ...`. Every key is listed in
gdet.detection.train.DET_DEFAULTS and README.md (detection section).
"""
import click

from gdet.cli import run_guarded


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (flat; at most one level of base:).")
@click.argument("overrides", nargs=-1)
def main(config_path, overrides):
    """Train an R-CNN detector; OVERRIDES are key=value pairs applied over the config."""
    from gdet.config import apply_overrides, load_config
    from gdet.detection.train import DET_DEFAULTS, train
    from gdet.engine import cleanup

    if config_path:
        cfg = load_config(config_path, overrides, defaults=DET_DEFAULTS)
    else:
        cfg = apply_overrides(DET_DEFAULTS, overrides)
    try:
        train(cfg)
    finally:
        cleanup()  # the torchrun process group, if any


if __name__ == "__main__":
    run_guarded(main.main, standalone_mode=True)
