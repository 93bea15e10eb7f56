#!/usr/bin/env python
"""Fine-tune an R-CNN detector: `tools/train_det.py --config configs/det_*.yaml [key=value ...]`.

Multi-GPU: `torchrun --nproc_per_node=N tools/train_det.py --config ...`. Every key is listed in
gdet.detection.train.DEFAULTS and README.md (detection section).
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
    from gdet.detection.train import DEFAULTS, train

    if config_path:
        cfg = load_config(config_path, overrides, defaults=DEFAULTS)
    else:
        cfg = apply_overrides(DEFAULTS, overrides)
    res = train(cfg)
    if res["rank"] == 0 and res["best_epoch"]:
        click.echo(f"best {res['score_name']} {res['best_score']:.4f} (epoch {res['best_epoch']}); "
                   f"checkpoints in {res['work_dir']}")


if __name__ == "__main__":
    run_guarded(main.main, standalone_mode=True)
