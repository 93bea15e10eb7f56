"""``gdet classify``: predict top-k classes, ``train`` a classifier, ``eval`` with 1/10/144 crops and ensembles."""
from __future__ import annotations

import json
import sys

import click

from gdet.errors import ConfigError


@click.group("classify", invoke_without_command=True)
@click.option("--image", "images", multiple=True, help="Image file or folder of images (repeatable).")
@click.option("--weights", multiple=True, help="Classification checkpoint (repeat for an ensemble).")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(1))
@click.option("--crops", default="1", show_default=True, type=click.Choice(["1", "10", "144"]),
              help="Test crops per image (144 = the paper's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the Polyak-averaged ones.")
@click.option("--backbone", default=None,
              help="Network of plain state-dict weights, e.g. googlenet_tv for torchvision's googlenet-*.pth.")
@click.option("--class-names", "class_names_file", default=None, type=click.Path(dir_okay=False),
              help="With --backbone: a text file with one class name per line.")
@click.pass_context
def classify(ctx, images, weights, topk, crops, as_json, device, raw, backbone, class_names_file):
    """Top-k classes of images; several --weights form an ensemble (softmax averaged over models and crops).

    Example: gdet classify --image cat.jpg --weights runs/cls_synth/best.pth --crops 10 --topk 3
    """
    if ctx.invoked_subcommand is not None:
        return
    if not images or not weights:
        raise click.UsageError("give --image PATH and --weights CKPT (or a subcommand: train, eval)")
    from gdet.classification.model import load_classifier
    from gdet.classification.predict import expand_image_args, predict
    from gdet.engine import resolve_device

    dev = resolve_device(device)
    paths = expand_image_args(images)
    names = _read_class_names(class_names_file) if class_names_file else None
    models = [load_classifier(w, dev, use_ema=not raw, backbone=backbone, class_names=names) for w in weights]
    results = predict(paths, models, crops=int(crops), topk=topk)
    if as_json:
        click.echo(json.dumps([{"image": p, "top": [{"class": c, "prob": round(v, 6)} for c, v in r]}
                               for p, r in zip(paths, results)], indent=2))
        return
    for p, r in zip(paths, results):
        click.echo(p)
        for c, v in r:
            click.echo(f"  {v:8.4f}  {c}")


@classify.command("train")
@click.option("--config", "config_path", required=True, help="configs/cls_*.yaml")
@click.argument("overrides", nargs=-1)
def train_cmd(config_path, overrides):
    """Train a classifier: gdet classify train --config configs/cls_synth.yaml epochs=3 data=DIR

    Under torchrun (tools/train_cls.py) it runs data-parallel.
    """
    run_train(config_path, overrides)


def run_train(config_path: str, overrides) -> dict:
    from gdet.classification.train import DEFAULTS, train
    from gdet.config import load_config

    cfg = load_config(config_path, list(overrides), DEFAULTS)
    result = train(cfg)
    if result["rank"] == 0:
        click.echo(f"best top-1 {result['best_acc1']:.4f}; checkpoints in {result['work_dir']}")
    return result


def _parse_crops(value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--crops {value!r}: expected a comma-separated list of 1, 10, 144") from None
    bad = [v for v in out if v not in (1, 10, 144)]
    if bad or not out:
        raise ConfigError(f"--crops {value!r}: each must be 1, 10 or 144")
    return out


@classify.command("eval")
@click.option("--data", required=True, help="Image folder DIR/<class>/*.jpg (e.g. the val split).")
@click.option("--weights", multiple=True, required=True, help="Checkpoint (repeat: ensembles of the first k).")
@click.option("--crops", default="1,10,144", show_default=True, help="Comma-separated crop counts.")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0))
@click.option("--limit", default=None, type=click.IntRange(1), help="An evenly spaced subset of N images.")
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the Polyak-averaged ones.")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(data, weights, crops, device, workers, limit, raw, as_json):
    """Top-1/top-5 error for every (number of models x crops), like Table 3 of the paper."""
    from gdet.classification.model import load_classifier
    from gdet.classification.predict import evaluate_multicrop
    from gdet.engine import resolve_device

    schemes = _parse_crops(crops)
    dev = resolve_device(device)
    models = [load_classifier(w, dev, use_ema=not raw) for w in weights]
    rows = evaluate_multicrop(data, models, schemes, workers=workers, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'models':>6} {'crops':>6} {'top-1 error':>12} {'top-5 error':>12}   ({rows[0]['images']} images)")
    for r in rows:
        click.echo(f"{r['models']:>6} {r['crops']:>6} {100 * r['top1_error']:>11.2f}% {100 * r['top5_error']:>11.2f}%")
    sys.stdout.flush()


def _read_class_names(path: str) -> list[str]:
    from pathlib import Path

    from gdet.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: class-name file not found")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(f"{p}: no class names (expected one per line)")
    return names
