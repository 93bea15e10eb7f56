#!/usr/bin/env python
"""Fuse detection result files offline: `tools/fuse_dets.py A.json B.json [...] --data DIR --split val
--method nms|wbf [--iou T] [--weights 1,1] --out fused.json`.

nms: concatenate and run per-class NMS; wbf: weighted boxes fusion (see gdet/detection/fusion.py).
"""
import click

from gdet.cli import run_guarded


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("dets", nargs=-1, required=True)
@click.option("--data", required=True, help="The ground-truth dataset the results refer to (for image ids/classes).")
@click.option("--split", default="val", show_default=True)
@click.option("--method", type=click.Choice(["nms", "wbf"]), default="nms", show_default=True)
@click.option("--iou", "iou_thr", type=float, default=None, help="NMS IoU (default 0.3) or WBF cluster IoU (0.55).")
@click.option("--weights", default=None, help="Comma-separated score weight per file.")
@click.option("--max-dets", default=100, show_default=True, type=int)
@click.option("--out", required=True, help="Fused result file (COCO-style JSON list).")
@click.option("--metrics", default="", help="Metrics to print for the fused result (e.g. voc,coco).")
def main(dets, data, split, method, iou_thr, weights, max_dets, out, metrics):
    """Fuse COCO-style detection result files of the same images."""
    from gdet.data import load_detection_set
    from gdet.detection.fusion import fuse_detections
    from gdet.errors import GdetError
    from gdet.evaluation import build_evaluator, format_table, read_results, write_results

    dset = load_detection_set(data, split=split)
    per_model = [read_results(p, dset.records, dset.class_names, dset.category_ids) for p in dets]
    w = None
    if weights:
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise GdetError(f"--weights {weights!r}: expected comma-separated numbers") from None
    fused = fuse_detections(per_model, method=method, iou_thr=iou_thr, weights=w, max_dets=max_dets)
    n = write_results(out, dset.records, fused, dset.class_names, dset.category_ids)
    click.echo(f"wrote {out}: {n} detections fused from {len(dets)} files ({method})")
    for metric in [m.strip() for m in metrics.split(",") if m.strip()]:
        ev = build_evaluator(metric, dset.class_names)
        ev.reset()
        ev.process(dset.records, fused)
        click.echo(format_table(ev.evaluate()))


if __name__ == "__main__":
    run_guarded(main.main, standalone_mode=True)
