"""``gdet proposals``: compute proposal files for a dataset, combine, summarise and evaluate them by recall."""
from __future__ import annotations

import json
from pathlib import Path

import click

from gdet.cli import FloatRange, write_json
from gdet.config import parse_override
from gdet.data import load_detection_set
from gdet.errors import GdetError
from gdet.parallel import process_group_from_env
from gdet.proposals import check_options
from gdet.proposals.combined import combine_sets
from gdet.proposals.compute import compute_proposals
from gdet.proposals.evaluation import evaluate_proposals, format_table, plot_recall_curves
from gdet.proposals.files import load_proposals, save_proposals

CONTEXT = {"help_option_names": ["-h", "--help"]}


def parse_options(items: tuple[str, ...]) -> dict:
    """``key=value`` method options (values read as YAML: numbers, lists, null)."""
    out = {}
    for item in items:
        keys, value = parse_override(item)
        if len(keys) != 1:
            raise GdetError(f"option {item!r}: nested keys are not supported here")
        out[keys[0]] = value
    return out


@click.group("proposals", context_settings=CONTEXT)
def proposals():
    """Object proposals: selective search, MultiBox, their combination."""


@proposals.command("compute", context_settings=CONTEXT)
@click.option("--data", "data", required=True, help="Dataset: VOC root, COCO .json, or a `gdet data synth` folder.")
@click.option("--split", default="val", show_default=True, help="Split to read.")
@click.option("--method", default="ss", show_default=True,
              type=click.Choice(["ss", "ss_quality", "selectivesearch", "multibox", "combined"]),
              help="Proposal method.")
@click.option("--proposal-weights", "weights", default=None, type=click.Path(dir_okay=False),
              help="MultiBox checkpoint (multibox and combined).")
@click.option("--out", "out", required=True, help="Output proposal file (.npz).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(0),
              help="Worker processes (0: in this process).")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Method option, e.g. --opt superpixel_scale=2 --opt max_side=500 (repeatable).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N images.")
@click.option("--keep-parts", is_flag=True, help="Keep the per-image files in OUT.parts/.")
def compute_cmd(data, split, method, weights, out, workers, opts, limit, keep_parts):
    """Compute proposals for every image of a split (resumable: finished images are not redone).

    Under torchrun (any number of processes and nodes) the images are shared out over the ranks and rank 0
    writes OUT."""
    kwargs = check_options(method, parse_options(opts), "--opt ")  # before the data is read or a worker starts
    if weights is not None:
        if method not in ("multibox", "combined"):
            raise GdetError(f"--proposal-weights: method {method!r} uses no MultiBox checkpoint (multibox and "
                            "combined do)")
        kwargs["weights"] = weights
    if method in ("multibox", "combined") and "weights" not in kwargs:
        raise GdetError(f"method {method!r} needs --proposal-weights PATH (a MultiBox checkpoint from "
                        "gdet train multibox)")
    dset = load_detection_set(data, split=split)
    records = dset.records[:limit] if limit else dset.records
    items = [(r.image_id, r.path) for r in records]
    with process_group_from_env() as info:
        res = compute_proposals(items, method, out, method_kwargs=kwargs, workers=workers,
                                meta={"data": str(data), "split": split}, keep_parts=keep_parts, distributed=True,
                                options_label="--opt ")
    if info.is_main:
        click.echo(f"{res['out']}: {res['images']} images ({res['computed']} computed, {res['reused']} reused), "
                   f"{res['boxes_per_image']:.1f} boxes per image")


@proposals.command("combine", context_settings=CONTEXT)
@click.option("--ss", "ss_path", required=True, help="Selective-search proposal file (.npz).")
@click.option("--multibox", "mb_path", required=True, help="MultiBox proposal file (.npz).")
@click.option("--out", "out", required=True, help="Output proposal file (.npz).")
@click.option("--top-k", default=200, show_default=True, type=click.IntRange(0), help="MultiBox boxes kept.")
@click.option("--dup-iou", default=0.9, show_default=True, type=FloatRange(0, 1),
              help="IoU at which a selective-search box duplicates a MultiBox box.")
def combine_cmd(ss_path, mb_path, out, top_k, dup_iou):
    """Combine precomputed selective-search and MultiBox files as the `combined` method does."""
    res = combine_sets(load_proposals(ss_path), load_proposals(mb_path), top_k=top_k, dup_iou=dup_iou)
    save_proposals(out, res)
    click.echo(f"{out}: {len(res)} images, {res.num_boxes().mean() if len(res) else 0:.1f} boxes per image")


@proposals.command("info", context_settings=CONTEXT)
@click.argument("path", type=click.Path(dir_okay=False))
def info_cmd(path):
    """Summarise a proposal file: images, boxes per image, method settings."""
    props = load_proposals(path)
    n = props.num_boxes()
    click.echo(f"{path}: {len(props)} images, {int(n.sum())} boxes "
               f"(per image: mean {n.mean() if len(n) else 0:.1f}, min {n.min() if len(n) else 0}, "
               f"max {n.max() if len(n) else 0})")
    click.echo(f"settings: {json.dumps(props.meta, sort_keys=True)}")


def _parse_counts(text: str) -> list[int | None]:
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            out.append(None)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise GdetError(f"--counts: {part!r} is not a positive integer or 'all'")
    return out


@proposals.command("eval", context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(),
              help="Dataset: VOC root, COCO .json, or a `gdet data synth` folder.")
@click.option("--split", default="val", show_default=True)
@click.option("--proposals", "files", multiple=True, required=True,
              help="Proposal file (.npz; repeatable); NAME=FILE sets the name shown in the table and plot.")
@click.option("--counts", default="100,500,1000,2000,all", show_default=True, help="Proposals kept per image.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N images of the split.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write the results as JSON (- for stdout).")
@click.option("--plot", default=None, type=click.Path(dir_okay=False), help="Write the recall-vs-count PNG here.")
def eval_cmd(data, split, files, counts, limit, json_path, plot):
    """Proposal recall at IoU 0.5 and 0.7, average recall (IoU 0.5:0.95) and MABO, by number kept and object size."""
    count_list = _parse_counts(counts)
    dset = load_detection_set(data, split=split)
    records = dset.records[:limit] if limit else dset.records
    results = {}
    for item in files:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        props = load_proposals(path)
        name = name or props.meta.get("method") or Path(path).stem
        if name in results:
            name = f"{name} ({Path(path).stem})"
        res = evaluate_proposals(records, props, count_list)
        res["file"] = str(path)
        res["settings"] = props.meta
        if res["images_without_proposals"]:
            click.echo(f"warning: {path}: {res['images_without_proposals']} of {len(records)} images have no "
                       f"proposals in the file", err=True)
        results[name] = res
    click.echo(dset.summary())
    click.echo(format_table(results))
    if json_path:
        write_json(results, json_path)
    if plot:
        plot_recall_curves(results, plot, title=f"proposal recall: {Path(str(data)).name} [{split}]")
