"""``gdet demo`` (``make demo``): detect objects in the bundled sample image with the shipped detector, then
measure that detector's mAP on a freshly generated synthetic val split."""
from __future__ import annotations

import time
from pathlib import Path

import click
from tqdm import tqdm

from gdet.cli import ASSETS, CONTEXT, device_options
from gdet.data import load_detection_set
from gdet.data.synth import SynthConfig, generate
from gdet.detection.cli import detection_options, load_cli_detectors, shared_options
from gdet.detection.inference import (EVAL_SCORE_THR, ProposalSource, detect_records, detections_to_rows,
                                      detector_proposals, format_table, write_detections)
from gdet.detection.model import Detector
from gdet.detection.visualize import draw_detections, save_png
from gdet.engine import resolve_device
from gdet.errors import GdetError
from gdet.evaluation import VOCEvaluator, build_evaluator, jsonable, plot_pr_curves
from gdet.io import save_json
from gdet.runtime import optimize
from gdet.structures import ImageRecord

DETECTOR = ASSETS / "detector_synth_fp16.pth"
SAMPLE = ASSETS / "sample.jpg"
# Selective search at the demo images' own size (320 x 240), for a detector that does not record its training
# proposals; the shipped one records this.
PROPOSAL_OPTIONS = {"max_side": 320}
VAL_SEED = 2014  # not a training seed (the training set used seed 0)


def _proposals(model) -> ProposalSource:
    """Proposals made as the detector's training proposals were (:func:`detector_proposals`), else
    :data:`PROPOSAL_OPTIONS`."""
    if not getattr(model, "proposals", None):
        return ProposalSource("ss", options=PROPOSAL_OPTIONS)
    spec, options, _ = detector_proposals(None, {}, model)
    return ProposalSource(spec, options=options)


def val_split(out: Path, images: int, seed: int) -> Path:
    """Generate (once) a synthetic set whose val split has ``images`` images (as many go to its unused train split,
    since the generator keeps at least one training image)."""
    root = out / f"synth_val_{images}_seed{seed}"
    if not (root / "ImageSets" / "Main" / "val.txt").is_file():
        # In this process (no worker pool): a demo must not depend on multiprocessing start methods.
        generate(SynthConfig(images=2 * images, seed=seed, width=320, height=240, val_fraction=0.5), root,
                 formats=("voc",), workers=1, show_progress=False)
    return root


def demo_map(model: Detector, root: Path, *, max_proposals: int, nms_iou: float, max_dets: int, device,
             precision: str = "fp32") -> tuple[dict, list[dict], VOCEvaluator]:
    """The detector's mAP on the val split of ``root`` (selective search at the detector's training settings).

    Returns:
        ``({"voc_mAP", "voc07_mAP", "coco_AP", "coco_AP50", "per_class"}, detections per image, the VOC
        evaluator holding the precision-recall curves)``.
    """
    dset = load_detection_set(root, split="val")
    if dset.class_names != model.class_names:
        raise GdetError(f"{root}: classes {dset.class_names} differ from the detector's {model.class_names}")
    dets = detect_records(model, dset.records, _proposals(model), device=device,
                          score_thr=EVAL_SCORE_THR, nms_iou=nms_iou, max_dets=max_dets, max_proposals=max_proposals,
                          precision=precision, desc="val")
    res: dict = {}
    voc = None
    for metric in ("voc", "voc07", "coco"):
        ev = build_evaluator(metric, dset.class_names)
        ev.reset()
        ev.process(list(dset.records), dets)
        r = ev.evaluate()
        if metric == "coco":
            res["coco_AP"], res["coco_AP50"] = r["summary"]["AP"], r["summary"]["AP50"]
        else:
            res[f"{metric}_mAP"] = r["mAP"]
        if metric == "voc":
            res["per_class"] = {row["class"]: row["ap"] for row in r["per_class"]}
            voc = ev
    return res, dets, voc


@click.command("demo", context_settings=CONTEXT)
@click.option("--out", default="demo_out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for <image stem>.png, detections.json, map.json and pr_curves.png.")
@click.option("--weights", default=str(DETECTOR), show_default=True, type=click.Path(dir_okay=False),
              help="Detector checkpoint, of either mode (rcnn or shared, as it was trained).")
@click.option("--image", default=str(SAMPLE), show_default=True, type=click.Path(dir_okay=False),
              help="Image to detect objects in.")
@click.option("--val-images", default=50, show_default=True, type=click.IntRange(min=0),
              help="Images of the generated val split for the mAP (0: skip the mAP).")
@click.option("--seed", default=VAL_SEED, show_default=True, help="Seed of the generated val split.")
@detection_options()
@shared_options
@device_options
def demo(out, weights, image, val_images, seed, max_proposals, score_thr, nms_iou, max_dets, mode, scales, max_size,
         device, precision, compile_, cuda_graphs):
    """Detect objects in gdet/assets/sample.jpg and report the shipped detector's mAP on a generated val split."""
    if not Path(weights).is_file():
        raise GdetError(f"{weights}: detector checkpoint not found (the package ships "
                        f"gdet/assets/{DETECTOR.name}; `gdet train det` trains one)")
    out = Path(out)
    dev = resolve_device(device)
    model = optimize(load_cli_detectors((weights,), dev, scales, max_size, mode), device=dev, precision=precision,
                     compile=compile_, cuda_graphs=cuda_graphs)
    size = f"{model.input_size} px {'crops' if model.mode == 'rcnn' else 'input'}"
    click.echo(f"detector: {weights} ({model.backbone.backbone_name}, {size}, "
               f"{model.num_classes} classes: {', '.join(model.class_names)})")
    click.echo(f"mode: {model.describe_mode()}")

    # 1. The sample image, as `gdet detect --image IMAGE --out OUT --json OUT/detections.json` draws and writes it.
    t0 = time.perf_counter()
    stem = Path(image).stem
    png, js = out / f"{stem}.png", out / "detections.json"

    def draw(index, rgb, dets):
        tqdm.write(format_table(str(image), detections_to_rows(dets, model.class_names)))
        save_png(draw_detections(rgb, dets, model.class_names), png)

    sample = [ImageRecord(image_id=stem, path=str(image), width=0, height=0)]
    dets = detect_records(model, sample, _proposals(model), device=dev,
                          score_thr=score_thr, nms_iou=nms_iou, max_dets=max_dets, max_proposals=max_proposals,
                          on_image=draw, leave=False)
    write_detections(js, [stem], dets, model.class_names)
    click.echo(f"wrote {png} and {js} ({time.perf_counter() - t0:.1f} s)")

    # 2. mAP on a generated val split.
    if not val_images:
        return
    t0 = time.perf_counter()
    root = val_split(out, val_images, seed)
    click.echo(f"val split: {val_images} generated images (seed {seed}) in {root}")
    res, _, voc = demo_map(model, root, max_proposals=max_proposals, nms_iou=nms_iou, max_dets=max_dets, device=dev)
    click.echo(f"{'class':<10} {'AP (VOC 2010+)':>15}")
    for name, ap in res["per_class"].items():
        click.echo(f"{name:<10} {100 * ap:>14.1f}" if ap == ap else f"{name:<10} {'-':>15}")
    click.echo(f"mAP on {val_images} generated val images: VOC 2010+ {100 * res['voc_mAP']:.1f}, "
               f"VOC 2007 11-point {100 * res['voc07_mAP']:.1f}, COCO AP@[.5:.95] {100 * res['coco_AP']:.1f}, "
               f"COCO AP50 {100 * res['coco_AP50']:.1f}  ({time.perf_counter() - t0:.0f} s)")
    save_json(jsonable({"weights": str(weights), "val_images": val_images, "seed": seed,
                        "max_proposals": max_proposals, **res}), out / "map.json")
    plot_pr_curves(voc.curves, out / "pr_curves.png", aps=res["per_class"],
                   title=f"{Path(weights).name}, {val_images} generated val images: "
                         f"VOC 2010+ mAP {100 * res['voc_mAP']:.1f}")
    click.echo(f"wrote {out / 'map.json'} and {out / 'pr_curves.png'}")
