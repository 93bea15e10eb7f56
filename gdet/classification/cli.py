"""``gdet classify``: top-k classes of images; ``gdet classify eval``: 1/10/144-crop error of models and ensembles."""
from __future__ import annotations

from pathlib import Path

import click

from gdet.classification.model import load_classifier
from gdet.classification.predict import evaluate_multicrop, predict
from gdet.cli import CONTEXT, device_options, note_shipped_weights, write_json
from gdet.data.image import expand_image_paths
from gdet.engine import resolve_device
from gdet.errors import ConfigError, DataError
from gdet.runtime import optimize
from gdet.train_cli import run_training


@click.group("classify", invoke_without_command=True, context_settings=CONTEXT)
@click.option("--image", "images", multiple=True,
              help="Image file, folder (its images, recursively) or glob pattern in quotes (repeatable).")
@click.option("--weights", multiple=True, type=click.Path(dir_okay=False),
              help="Classification checkpoint (repeatable: an ensemble).")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1), help="Classes shown per image.")
@click.option("--crops", default="1", show_default=True, type=click.Choice(["1", "10", "144"]),
              help="Test crops per image (144 = the paper's).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write the predictions as JSON (- for stdout instead of the text).")
@device_options
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the Polyak-averaged ones.")
@click.option("--backbone", default=None,
              help="Network of plain state-dict weights, e.g. googlenet_tv for torchvision's googlenet-*.pth.")
@click.option("--class-names", "class_names_file", default=None, type=click.Path(dir_okay=False),
              help="With --backbone: a text file with one class name per line.")
@click.pass_context
def classify(ctx, images, weights, top_k, crops, json_path, device, precision, compile_, cuda_graphs, raw,
             backbone, class_names_file):
    """Top-k classes of images; several --weights form an ensemble (softmax averaged over models and crops).

    Example: gdet classify --image photos/ --weights runs/cls_synth/best.pth --crops 10 --top-k 3
    """
    if ctx.invoked_subcommand is not None:
        return
    if not images or not weights:
        raise click.UsageError("give --image PATH and --weights CKPT (or the subcommand eval)")
    paths = expand_image_paths(images)
    dev = resolve_device(device)
    names = read_class_names(class_names_file) if class_names_file else None
    models = [optimize(load_classifier(w, dev, use_ema=not raw, backbone=backbone, class_names=names), device=dev,
                       precision=precision, compile=compile_, cuda_graphs=cuda_graphs) for w in weights]
    results = predict(paths, models, crops=int(crops), topk=top_k)
    if json_path:
        write_json([{"image": p, "top": [{"class": c, "prob": round(v, 6)} for c, v in r]}
                    for p, r in zip(paths, results)], json_path)
    if json_path != "-":
        for p, r in zip(paths, results):
            click.echo(p)
            for c, v in r:
                click.echo(f"  {v:8.4f}  {c}")
    note_shipped_weights(weights)  # after the results, so that a bad input's error stays the only line


@classify.command("train", hidden=True, context_settings=CONTEXT)
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="configs/cls_*.yaml")
@click.argument("overrides", nargs=-1)
def train_cmd(config, overrides):
    """Same as `gdet train cls`."""
    run_training("cls", config, overrides)


def run_train(config_path: str, overrides) -> dict:
    """Train a classifier from a config file and ``KEY=VALUE`` overrides (``gdet train cls``)."""
    return run_training("cls", config_path, overrides)


def parse_crops(value: str) -> list[int]:
    """``--crops 1,10,144`` as a list of crop counts."""
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--crops {value!r}: expected a comma-separated list of 1, 10, 144") from None
    bad = [v for v in out if v not in (1, 10, 144)]
    if bad or not out:
        raise ConfigError(f"--crops {value!r}: each must be 1, 10 or 144")
    return out


@classify.command("eval", context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(), help="Image folder DIR/<class>/*.jpg (e.g. the val split).")
@click.option("--weights", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (repeatable: ensembles of the first k).")
@click.option("--crops", default="1,10,144", show_default=True, help="Comma-separated crop counts.")
@device_options
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0), help="Image-decoding processes.")
@click.option("--limit", default=None, type=click.IntRange(1), help="An evenly spaced subset of N images.")
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the Polyak-averaged ones.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write the rows as JSON (- for stdout instead of the table).")
def eval_cmd(data, weights, crops, device, precision, compile_, cuda_graphs, workers, limit, raw, json_path):
    """Top-1/top-5 error for every (number of models x crops), like Table 3 of the paper."""
    schemes = parse_crops(crops)
    dev = resolve_device(device)
    models = [optimize(load_classifier(w, dev, use_ema=not raw), device=dev, precision=precision, compile=compile_,
                       cuda_graphs=cuda_graphs)
              for w in weights]
    rows = evaluate_multicrop(data, models, schemes, workers=workers, limit=limit)
    if json_path:
        write_json(rows, json_path)
        if json_path == "-":
            return
    click.echo(f"{'models':>6} {'crops':>6} {'top-1 error':>12} {'top-5 error':>12}   ({rows[0]['images']} images)")
    for r in rows:
        click.echo(f"{r['models']:>6} {r['crops']:>6} {100 * r['top1_error']:>11.2f}% {100 * r['top5_error']:>11.2f}%")


def read_class_names(path: str) -> list[str]:
    """Class names from a text file, one per line (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: class-name file not found")
    names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(f"{p}: no class names (expected one per line)")
    return names
