"""``gdet demo`` (``make demo``): detect objects in the bundled sample image with the shipped detector, then
measure that detector's mAP on a freshly generated synthetic val split."""
from __future__ import annotations

import time
from pathlib import Path

import click

ASSETS = Path(__file__).resolve().parent / "assets"
DETECTOR = ASSETS / "detector_synth_fp16.pth"
SAMPLE = ASSETS / "sample.jpg"
# The shipped detector was trained on 320 x 240 synthetic images with selective search run at their own size.
PROPOSAL_OPTIONS = {"max_side": 320}
VAL_SEED = 2014  # not a training seed (the training set used seed 0)


def _val_split(out: Path, images: int, seed: int, workers: int) -> Path:
    """Generate (once) a synthetic set whose val split has ``images`` images (as many go to its unused train split,
    since the generator keeps at least one training image)."""
    from gdet.data.synth import SynthConfig, generate

    root = out / f"synth_val_{images}_seed{seed}"
    if not (root / "ImageSets" / "Main" / "val.txt").is_file():
        generate(SynthConfig(images=2 * images, seed=seed, width=320, height=240, val_fraction=0.5), root,
                 formats=("voc",), workers=workers, show_progress=False)  # workers=1: in this process
    return root


@click.command("demo", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", default="demo_out", show_default=True, type=click.Path(file_okay=False))
@click.option("--weights", default=str(DETECTOR), show_default=True, help="Detector checkpoint.")
@click.option("--image", default=str(SAMPLE), show_default=True, help="Image to detect objects in.")
@click.option("--val-images", default=50, show_default=True, type=click.IntRange(min=0),
              help="Images of the generated val split for the mAP (0: skip the mAP).")
@click.option("--seed", default=VAL_SEED, show_default=True, help="Seed of the generated val split.")
@click.option("--max-proposals", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--score-thr", default=0.5, show_default=True, type=float, help="Score threshold for the drawing.")
@click.option("--device", default="auto", show_default=True)
def demo(out_dir, weights, image, val_images, seed, max_proposals, score_thr, device):
    """Detect objects in gdet/assets/sample.jpg and report the shipped detector's mAP on a generated val split."""
    from gdet.data import load_detection_set, read_image
    from gdet.detection.inference import detections_to_rows, format_table
    from gdet.detection.model import detect_image, load_detector
    from gdet.detection.train import evaluate_detector, load_proposal_set
    from gdet.detection.visualize import draw_detections, save_png
    from gdet.engine import resolve_device
    from gdet.errors import GdetError
    from gdet.evaluation import VOCEvaluator, jsonable, plot_pr_curves
    from gdet.io import save_json
    from gdet.proposals import build_proposer

    if not Path(weights).is_file():
        raise GdetError(f"{weights}: detector checkpoint not found (the repository ships "
                        f"gdet/assets/{DETECTOR.name}; see README.md (detection section) to train one)")
    out = Path(out_dir)
    dev = resolve_device(device)
    model = load_detector(weights, dev)
    click.echo(f"detector: {weights} ({model.backbone.backbone_name}, {model.input_size} px crops, "
               f"{model.num_classes} classes: {', '.join(model.class_names)})")

    # 1. The sample image.
    t0 = time.perf_counter()
    rgb = read_image(image)
    proposer = build_proposer("ss", **PROPOSAL_OPTIONS)
    boxes, _ = proposer.propose(rgb)
    dets = detect_image(model, rgb, boxes, score_thr=score_thr, nms_thr=0.3, max_dets=100,
                        max_proposals=max_proposals, device=dev)
    rows = detections_to_rows(dets, model.class_names)
    click.echo(format_table(str(image), rows))
    png, js = out / f"{Path(image).stem}_detections.png", out / f"{Path(image).stem}_detections.json"
    save_png(draw_detections(rgb, dets, model.class_names), png)
    save_json({"image": str(image), "weights": str(weights), "proposals": min(len(boxes), max_proposals),
               "score_thr": score_thr, "detections": rows}, js)
    click.echo(f"wrote {png} and {js} ({time.perf_counter() - t0:.1f} s)")

    # 2. mAP on a generated val split.
    if not val_images:
        return
    t0 = time.perf_counter()
    # In-process (no worker pools): a demo must not depend on multiprocessing start methods; ~1 s per image.
    root = _val_split(out, val_images, seed, workers=1)
    dset = load_detection_set(root, split="val")
    if dset.class_names != model.class_names:
        raise GdetError(f"{root}: classes {dset.class_names} differ from the detector's {model.class_names}")
    click.echo(f"val split: {len(dset)} generated images (seed {seed}) in {root}; computing proposals ...")
    props = load_proposal_set("ss", dset.records, out, f"demo_val{val_images}_seed{seed}",
                                        PROPOSAL_OPTIONS, workers=0)
    res, val_dets = evaluate_detector(model, dset.records, dset.class_names, props, device=dev,
                                      score_thr=0.001, nms_thr=0.3, max_dets=100, max_proposals=max_proposals)
    click.echo(f"{'class':<10} {'AP (VOC 2010+)':>15}")
    for name, ap in res["per_class"].items():
        click.echo(f"{name:<10} {100 * ap:>14.1f}" if ap == ap else f"{name:<10} {'-':>15}")
    click.echo(f"mAP on {len(dset)} generated val images: VOC 2010+ {100 * res['voc_mAP']:.1f}, "
               f"VOC 2007 11-point {100 * res['voc07_mAP']:.1f}, COCO AP@[.5:.95] {100 * res['coco_AP']:.1f}, "
               f"COCO AP50 {100 * res['coco_AP50']:.1f}  ({time.perf_counter() - t0:.0f} s)")
    save_json(jsonable({"weights": str(weights), "val_images": len(dset), "seed": seed,
                        "max_proposals": max_proposals, **res}), out / "map.json")
    # The curves behind the VOC number, one panel per class.
    voc = VOCEvaluator(dset.class_names, metric="voc")
    voc.process(list(dset.records), val_dets)
    voc.evaluate()
    plot_pr_curves(voc.curves, out / "pr_curves.png", aps=res["per_class"],
                   title=f"shipped detector, {len(dset)} generated val images: VOC 2010+ mAP {100 * res['voc_mAP']:.1f}")
    click.echo(f"wrote {out / 'map.json'} and {out / 'pr_curves.png'}")
