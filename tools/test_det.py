#!/usr/bin/env python
"""Run a detector (or an ensemble) over a dataset split and write COCO-format results, then print its mAP.

`tools/test_det.py --data DIR --split val --weights CKPT [--weights CKPT ...] --proposals ss|FILE --out dets.json`
The result file is evaluated offline with `gdet eval` / `tools/eval_map.py` and fused with `tools/fuse_dets.py`.
"""
import click

from gdet.cli import run_guarded


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, help="Dataset: VOC root, COCO .json, or a `gdet data synth` folder.")
@click.option("--split", default="val", show_default=True)
@click.option("--weights", multiple=True, required=True, help="Detector checkpoint (repeatable: ensemble).")
@click.option("--proposals", default="ss", show_default=True, help="Proposal method or .npz proposal file.")
@click.option("--multibox-weights", default=None, help="MultiBox checkpoint (multibox / combined).")
@click.option("--max-proposals", default=2000, show_default=True, type=click.IntRange(min=1))
@click.option("--score-thr", default=0.001, show_default=True, type=float)
@click.option("--nms", "nms_thr", default=0.3, show_default=True, type=float)
@click.option("--max-dets", default=100, show_default=True, type=int)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Only the first N images.")
@click.option("--out", required=True, help="Result file (COCO-style JSON list).")
@click.option("--metrics", default="voc,coco", show_default=True, help="Metrics printed (voc07, voc, coco, ilsvrc; "
              "empty for none).")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]))
def main(data, split, weights, proposals, multibox_weights, max_proposals, score_thr, nms_thr, max_dets, limit, out,
         metrics, device, precision):
    """Detect every image of a split and write COCO-format results."""
    from gdet.data import load_detection_set, read_image
    from gdet.detection.inference import ProposalSource
    from gdet.detection.model import detect_image, load_detectors
    from gdet.engine import progress, resolve_device
    from gdet.evaluation import build_evaluator, format_table, write_results

    dev = resolve_device(device)
    dset = load_detection_set(data, split=split)
    records = dset.records[:limit] if limit else dset.records
    model = load_detectors(list(weights), dev)
    if list(model.class_names) != list(dset.class_names):
        from gdet.errors import GdetError

        raise GdetError(f"{weights[0]}: trained for classes {model.class_names}, but {data} has {dset.class_names}")
    source = ProposalSource(proposals, multibox_weights)
    dets = []
    for rec in progress(records, desc="detect", unit="img"):
        rgb = read_image(rec.path)
        dets.append(detect_image(model, rgb, source(rec.image_id, rgb, rec.path), score_thr=score_thr,
                                 nms_thr=nms_thr, max_dets=max_dets, max_proposals=max_proposals,
                                 precision=precision, device=dev))
    n = write_results(out, records, dets, dset.class_names, dset.category_ids)
    click.echo(f"wrote {out}: {n} detections on {len(records)} images")
    for metric in [m.strip() for m in metrics.split(",") if m.strip()]:
        ev = build_evaluator(metric, dset.class_names)
        ev.reset()
        ev.process(records, dets)
        click.echo(format_table(ev.evaluate()))


if __name__ == "__main__":
    run_guarded(main.main, standalone_mode=True)
