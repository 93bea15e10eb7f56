#!/usr/bin/env python
"""Proposal recall: `python tools/eval_proposals.py --data DIR --proposals FILE [--proposals FILE2 ...]
[--split val] [--out JSON] [--plot PNG]`.

Prints recall at IoU 0.5 and 0.7, average recall (IoU 0.5:0.95) and MABO at 100, 500, 1000, 2000 and all
proposals per image (by object size too), writes them as JSON and plots recall against the number kept.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from gdet.cli import run_guarded


def _parse_counts(text: str) -> list[int | None]:
    from gdet.errors import GdetError

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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, help="Dataset: VOC root, COCO .json, or a `gdet data synth` folder.")
@click.option("--split", default="val", show_default=True)
@click.option("--proposals", "files", multiple=True, required=True,
              help="Proposal file(s) (.npz); NAME=FILE sets the name shown in the table and plot.")
@click.option("--counts", default="100,500,1000,2000,all", show_default=True, help="Proposals kept per image.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N images of the split.")
@click.option("--out", default=None, help="Write the results as JSON here.")
@click.option("--plot", default=None, help="Write the recall-vs-count PNG here.")
def main(data, split, files, counts, limit, out, plot):
    """Evaluate proposal files by recall."""
    from gdet.data.dataset import load_detection_set
    from gdet.io import save_json
    from gdet.proposals.evaluation import evaluate_proposals, format_table, plot_recall_curves
    from gdet.proposals.files import load_proposals

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
    click.echo(f"{dset.summary()}")
    click.echo(format_table(results))
    if out:
        save_json(results, out)
    if plot:
        plot_recall_curves(results, plot, title=f"proposal recall: {Path(str(data)).name} [{split}]")


if __name__ == "__main__":
    run_guarded(main.main, standalone_mode=True)
    sys.exit(0)
