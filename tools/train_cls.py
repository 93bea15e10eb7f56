#!/usr/bin/env python
"""Train a classifier: `python tools/train_cls.py --config configs/cls_synth.yaml [key=value ...]`;
data-parallel with `torchrun --nproc_per_node=N tools/train_cls.py --config ...`."""
import click

from gdet.cli import run_guarded


@click.command()
@click.option("--config", "config_path", required=True, help="configs/cls_*.yaml")
@click.argument("overrides", nargs=-1)
def main(config_path, overrides):
    """Same as `gdet classify train`."""
    from gdet.classification.cli import run_train

    run_train(config_path, overrides)


if __name__ == "__main__":
    run_guarded(main.main, standalone_mode=True)
