"""``gdet proposals``: compute proposal files for a dataset and summarise them."""
from __future__ import annotations

import click

from gdet.errors import GdetError


def parse_options(items: tuple[str, ...]) -> dict:
    """``key=value`` method options (values read as YAML: numbers, lists, null)."""
    from gdet.config import parse_override

    out = {}
    for item in items:
        keys, value = parse_override(item)
        if len(keys) != 1:
            raise GdetError(f"option {item!r}: nested keys are not supported here")
        out[keys[0]] = value
    return out


@click.group("proposals")
def proposals():
    """Object proposals: selective search, MultiBox, their combination."""


@proposals.command("compute")
@click.option("--data", "data", required=True, help="Dataset: VOC root, COCO .json, or a `gdet data synth` folder.")
@click.option("--split", default="val", show_default=True, help="Split to read.")
@click.option("--method", default="ss", show_default=True,
              type=click.Choice(["ss", "ss_quality", "selectivesearch", "multibox", "combined"]),
              help="Proposal method.")
@click.option("--weights", default=None, help="MultiBox checkpoint (multibox and combined).")
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
    from gdet.data.dataset import load_detection_set
    from gdet.proposals.compute import compute_proposals, process_group_from_env

    kwargs = parse_options(opts)
    if weights is not None:
        kwargs["weights"] = weights
    if method in ("multibox", "combined") and "weights" not in kwargs:
        raise GdetError(f"method {method!r} needs --weights PATH (a MultiBox checkpoint from tools/train_multibox.py)")
    dset = load_detection_set(data, split=split)
    records = dset.records[:limit] if limit else dset.records
    items = [(r.image_id, r.path) for r in records]
    with process_group_from_env() as info:
        res = compute_proposals(items, method, out, method_kwargs=kwargs, workers=workers,
                                meta={"data": str(data), "split": split}, keep_parts=keep_parts, distributed=True)
    if info.is_main:
        click.echo(f"{res['out']}: {res['images']} images ({res['computed']} computed, {res['reused']} reused), "
                   f"{res['boxes_per_image']:.1f} boxes per image")


@proposals.command("combine")
@click.option("--ss", "ss_path", required=True, help="Selective-search proposal file (.npz).")
@click.option("--multibox", "mb_path", required=True, help="MultiBox proposal file (.npz).")
@click.option("--out", "out", required=True, help="Output proposal file (.npz).")
@click.option("--top-k", default=200, show_default=True, type=click.IntRange(0), help="MultiBox boxes kept.")
@click.option("--dup-iou", default=0.9, show_default=True, type=float,
              help="IoU at which a selective-search box duplicates a MultiBox box.")
def combine_cmd(ss_path, mb_path, out, top_k, dup_iou):
    """Combine precomputed selective-search and MultiBox files as the `combined` method does."""
    from gdet.proposals.combined import combine_sets
    from gdet.proposals.files import load_proposals, save_proposals

    res = combine_sets(load_proposals(ss_path), load_proposals(mb_path), top_k=top_k, dup_iou=dup_iou)
    save_proposals(out, res)
    click.echo(f"{out}: {len(res)} images, {res.num_boxes().mean() if len(res) else 0:.1f} boxes per image")


@proposals.command("info")
@click.argument("path")
def info_cmd(path):
    """Summarise a proposal file: images, boxes per image, method settings."""
    import json

    from gdet.proposals.files import load_proposals

    props = load_proposals(path)
    n = props.num_boxes()
    click.echo(f"{path}: {len(props)} images, {int(n.sum())} boxes "
               f"(per image: mean {n.mean() if len(n) else 0:.1f}, min {n.min() if len(n) else 0}, "
               f"max {n.max() if len(n) else 0})")
    click.echo(f"settings: {json.dumps(props.meta, sort_keys=True)}")
