"""``gdet detect``: R-CNN detection of images with one checkpoint or an ensemble, as a table, PNGs and JSON."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("detect", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--image", "images", multiple=True, required=True, type=click.Path(),
              help="Image file (repeatable).")
@click.option("--weights", "weights", multiple=True, required=True, type=click.Path(),
              help="Detector checkpoint (repeatable: several form an ensemble, probabilities averaged).")
@click.option("--proposals", default="ss", show_default=True,
              help="ss | ss_quality | selectivesearch | multibox | combined, or a .npz proposal file.")
@click.option("--multibox-weights", default=None, type=click.Path(), help="MultiBox checkpoint (multibox/combined).")
@click.option("--proposal-opt", "proposal_opts", multiple=True, metavar="KEY=VALUE",
              help="Proposal method option, as `gdet proposals compute --opt` (e.g. tiles=3; repeatable).")
@click.option("--max-proposals", default=2000, show_default=True, type=click.IntRange(min=1),
              help="Proposals kept per image (best first).")
@click.option("--score-thr", default=0.3, show_default=True, type=click.FloatRange(0, 1),
              help="Minimum class probability shown.")
@click.option("--nms", "nms_thr", default=0.3, show_default=True, type=click.FloatRange(0, 1),
              help="Per-class NMS IoU threshold.")
@click.option("--soft-nms", type=click.Choice(["linear", "gaussian"]), default=None, help="Soft-NMS instead of NMS.")
@click.option("--max-dets", default=100, show_default=True, type=click.IntRange(min=1), help="Detections per image.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the images with boxes drawn (PNG).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), help="Write detections as JSON.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]))
def detect(images, weights, proposals, multibox_weights, proposal_opts, max_proposals, score_thr, nms_thr, soft_nms,
           max_dets, out_dir, json_path, device, precision):
    """Detect objects: proposals -> warped crops -> softmax -> per-class NMS -> top detections.

    Example: gdet detect --image street.jpg --weights gdet/assets/detector_synth_fp16.pth --out out/
    """
    from gdet.data import read_image
    from gdet.detection.inference import ProposalSource, detections_to_rows, format_table
    from gdet.detection.model import detect_image, load_detectors
    from gdet.detection.visualize import draw_detections, save_png
    from gdet.engine import resolve_device
    from gdet.io import save_json
    from gdet.proposals.cli import parse_options

    dev = resolve_device(device)
    model = load_detectors(list(weights), dev)
    source = ProposalSource(proposals, multibox_weights, parse_options(proposal_opts))
    results = []
    for path in images:
        rgb = read_image(path)
        boxes = source(Path(path).stem, rgb, path)
        dets = detect_image(model, rgb, boxes, score_thr=score_thr, nms_thr=nms_thr, max_dets=max_dets,
                            soft_nms=soft_nms, max_proposals=max_proposals, precision=precision, device=dev)
        rows = detections_to_rows(dets, model.class_names)
        click.echo(format_table(str(path), rows))
        results.append({"image": str(path), "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                        "num_proposals": int(min(len(boxes), max_proposals)), "detections": rows})
        if out_dir:
            png = Path(out_dir) / f"{Path(path).stem}.png"
            save_png(draw_detections(rgb, dets, model.class_names), png)
            click.echo(f"  drawn: {png}")
    if json_path:
        save_json({"weights": [str(w) for w in weights], "proposals": proposals, "score_thr": score_thr,
                   "nms": nms_thr, "class_names": model.class_names, "images": results}, json_path)
        click.echo(f"wrote {json_path}")
