"""`gdet eval` (and tools/eval_map.py): score a detection result file against a VOC or COCO dataset."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import click

from gdet.cli import write_json
from gdet.errors import GdetError
from gdet.evaluation import (METRICS, build_evaluator, format_table, parse_metrics, plot_pr_curves, read_results,
                             save_result_json)
from gdet.evaluation.report import jsonable


def evaluate_files(gt: str | os.PathLike, dets: str | os.PathLike, metric: str | Sequence[str] = "voc",
                   split: str = "val", plots: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   use_plus_one: bool = False, compat: str = "devkit",
                   max_dets: tuple[int, int, int] = (1, 10, 100), errors: bool = False) -> dict:
    """Evaluate a result file (see :mod:`gdet.evaluation.results`) against a dataset.

    Args:
        gt: a VOC root, a COCO instances ``.json``, or a folder with ``<split>.json``.
        dets: the result ``.json``.
        metric: ``voc07``, ``voc``, ``coco`` or ``ilsvrc``, several of them as a list or a comma-separated string
            (the files are read once).
        split: the split to read (VOC ``ImageSets/Main/<split>.txt`` or ``<split>.json``).
        plots: folder for ``pr_<metric>.png`` (one per metric).
        out: path of the JSON with every figure.
        use_plus_one, compat: VOC/ILSVRC options (see :class:`~gdet.evaluation.VOCEvaluator`).
        max_dets: COCO: COCOeval's ``maxDets`` (see :class:`~gdet.evaluation.COCOEvaluator`).
        errors: also break each class's top detections into kinds of error (:mod:`gdet.evaluation.errors`, on
            the VOC devkit's matching at IoU 0.5 whatever ``metric`` is; with ``plots``, ``errors.png``).

    Returns:
        for one metric (a name, or a list of one), the evaluator's result dict plus ``gt``, ``dets``, ``seconds``
        (and ``errors`` if asked); for several, ``{metric: result}`` for each beside those keys, the layout of
        ``gdet test --json``.
    """
    from gdet.data import load_detection_set

    metrics = parse_metrics(metric if isinstance(metric, str) else ",".join(metric))
    if not metrics:
        raise GdetError(f"--metrics: no metric given (known: {', '.join(METRICS)})")
    t0 = time.perf_counter()
    # the ground truth exactly as written (no clipping, float64), as the official tools read it
    dset = load_detection_set(gt, split=split, check_images=False, clip=False)
    detections = read_results(dets, dset.records, dset.class_names, dset.category_ids)
    results, evaluators = {}, {}
    for m in metrics:
        kwargs = {}
        if m in ("voc07", "voc"):
            kwargs = {"use_plus_one": use_plus_one, "compat": compat}
        elif m == "ilsvrc":
            kwargs = {"use_plus_one": use_plus_one}
        elif m == "coco":
            kwargs = {"max_dets": tuple(max_dets)}
        ev = evaluators[m] = build_evaluator(m, dset.class_names, **kwargs)
        ev.process(dset.records, detections)
        results[m] = ev.evaluate()
    result = results[metrics[0]] if len(metrics) == 1 else dict(results)
    if errors:
        from gdet.evaluation.errors import error_breakdown, plot_errors

        voc = next((evaluators[m] for m in ("voc", "voc07") if m in evaluators), None)
        if voc is None:
            voc = build_evaluator("voc", dset.class_names, use_plus_one=use_plus_one, compat=compat)
            voc.process(dset.records, detections)
        result["errors"] = error_breakdown(voc)
        if plots:
            plot_errors(result["errors"], Path(plots) / "errors.png", title=f"{Path(dets).name}: top-N detections")
    result.update(gt=str(gt), dets=str(dets), seconds=round(time.perf_counter() - t0, 3))
    if plots:
        for m in metrics:
            aps = {r["class"]: r["ap"] if m != "coco" else r["ap50"] for r in results[m]["per_class"]}
            what = "precision at IoU 0.50" if m == "coco" else "precision-recall"
            plot_pr_curves(evaluators[m].curves, Path(plots) / f"pr_{m}.png", aps=aps,
                           title=f"{Path(dets).name}: {what}")
    if out and str(out) != "-":
        save_result_json(result, out)
    return result


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", "gt", required=True, type=click.Path(),
              help="Ground truth: VOC root, COCO .json, or folder with <split>.json.")
@click.option("--dets", required=True, type=click.Path(),
              help="COCO-style result .json (gdet detect --json, gdet test --out, gdet fuse --out).")
@click.option("--metrics", "--metric", "metrics", default="voc", show_default=True,
              help="Metrics, comma-separated (as for gdet test): voc07: 11-point; voc: VOC2010+ all-point; coco: "
                   "pycocotools; ilsvrc: size-aware IoU.")
@click.option("--split", default="val", show_default=True, help="Split of a VOC root / synthetic folder.")
@click.option("--plots", type=click.Path(), default=None,
              help="Folder for the PNGs: pr_<metric>.png per metric (and errors.png with --errors).")
@click.option("--json", "out", type=click.Path(dir_okay=False), default=None,
              help="Write every figure to this JSON (- for stdout, instead of the table).")
@click.option("--plus-one", is_flag=True, help="Legacy +1 pixel widths (boxes as inclusive pixel indices).")
@click.option("--compat", type=click.Choice(["devkit", "py-faster-rcnn"]), default="devkit", show_default=True,
              help="VOC: the official devkit's rules or its py-faster-rcnn port (IoU > 0.5, arange thresholds).")
@click.option("--max-dets", default="1,10,100", show_default=True,
              help="COCO: the three per-image detection limits of COCOeval (AR1/AR10/AR100; AP uses the last).")
@click.option("--errors", is_flag=True,
              help="Also split each class's N best detections (N = its objects) into correct, localisation, "
                   "duplicate, confusion and background, at IoU 0.5 (with --plots: errors.png).")
def eval_cmd(gt, dets, metrics, split, plots, out, plus_one, compat, max_dets, errors):
    """Score a detection result file (mAP per class, PR curves, JSON)."""
    names = parse_metrics(metrics)
    try:
        limits = tuple(int(v) for v in max_dets.split(","))
    except ValueError:
        limits = ()
    if len(limits) != 3 or min(limits) < 1 or sorted(limits) != list(limits):
        raise GdetError(f"--max-dets: expected three increasing positive integers like 1,10,100, got {max_dets!r}")
    result = evaluate_files(gt, dets, names, split, plots, out, plus_one, compat, limits, errors)
    if out == "-":  # the JSON is the output
        write_json(jsonable(result), "-")
        return
    for i, m in enumerate(names):
        click.echo(("" if i == 0 else "\n") + format_table(result if len(names) == 1 else result[m]))
    if errors:
        from gdet.evaluation.errors import format_errors

        click.echo("")
        click.echo(format_errors(result["errors"]))
    if plots:
        for m in names:
            click.echo(f"wrote {Path(plots) / f'pr_{m}.png'}")
        if errors:
            click.echo(f"wrote {Path(plots) / 'errors.png'}")
    if out:
        click.echo(f"wrote {out}")
