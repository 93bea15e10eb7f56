"""``gdet detect`` (images), ``gdet test`` (a dataset split, = tools/test_det.py) and ``gdet fuse`` (result files,
= tools/fuse_dets.py)."""
from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from gdet.cli import (CONTEXT, FloatRange, device_options, int_list, note_shipped_weights, refuse_overwriting_inputs,
                      write_json)
from gdet.data import load_detection_set
from gdet.data.image import expand_image_paths
from gdet.detection.fusion import check_score_weights, fuse_detections
from gdet.detection.inference import (DEFAULTS, EVAL_MAX_PROPOSALS, EVAL_SCORE_THR, ProposalSource, detect_records,
                                      detections_to_rows, detector_proposals, format_table, image_ids_for,
                                      write_detections)
from gdet.detection.model import MODES, load_detectors
from gdet.detection.visualize import draw_detections, save_png
from gdet.engine import resolve_device
from gdet.errors import GdetError
from gdet.evaluation import build_evaluator, parse_metrics
from gdet.evaluation import format_table as format_metrics
from gdet.evaluation import jsonable, read_results, write_results
from gdet.parallel import gather_to_rank0, process_group_from_env
from gdet.proposals.cli import parse_options
from gdet.runtime import optimize
from gdet.structures import ImageRecord


def proposal_options(f):
    """The proposal options shared by every command that detects."""
    f = click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
                     help="Processes running the proposal method on the next images while the network scores "
                          "(0: in this process).")(f)
    f = click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
                     help="Proposal method option (e.g. max_side=500, tiles=3; repeatable).")(f)
    f = click.option("--proposal-weights", default=None, type=click.Path(dir_okay=False),
                     help="MultiBox checkpoint of the multibox / combined proposals.")(f)
    f = click.option("--proposals", default=None,
                     help="ss | ss_quality | selectivesearch | multibox | combined, or a .npz proposal file "
                          "[default: the method the detector was trained with, with its options; else ss].")(f)
    return f


SOFT_NMS = click.option("--soft-nms", type=click.Choice(["linear", "gaussian"]), default=None,
                        help="Soft-NMS (Bodla et al.) instead of NMS: overlaps are down-weighted, not removed.")


def detection_options(score_thr: float = DEFAULTS["score_thr"], max_proposals: int = DEFAULTS["max_proposals"]):
    """Post-processing options shared by every command that detects (one set of defaults)."""
    def wrap(f):
        f = click.option("--max-dets", default=DEFAULTS["max_dets"], show_default=True, type=click.IntRange(min=1),
                         help="Detections kept per image.")(f)
        f = click.option("--nms-iou", default=DEFAULTS["nms_iou"], show_default=True, type=FloatRange(0, 1),
                         help="Per-class NMS IoU threshold.")(f)
        f = click.option("--score-thr", default=score_thr, show_default=True, type=FloatRange(0, 1),
                         help="Minimum class probability kept.")(f)
        f = click.option("--max-proposals", default=max_proposals, show_default=True,
                         type=click.IntRange(min=1), help="Proposals scored per image (best first).")(f)
        return f
    return wrap


def shared_options(f):
    """``--mode``, ``--scales`` and ``--max-size``: the scoring mode and a shared-mode detector's image pyramid at
    inference, on every command that detects."""
    f = click.option("--max-size", default=None, type=click.IntRange(min=1),
                     help="Shared-mode detectors: cap on the longer image side (default: the checkpoint's).")(f)
    f = click.option("--scales", default=None,
                     help="Shared-mode detectors: comma list of shorter image sides the trunk runs at, each region "
                          "pooled from the one where it is nearest the crop size (default: the checkpoint's).")(f)
    f = click.option("--mode", default=None, type=click.Choice(MODES),
                     help="Score regions in this mode whatever the checkpoint was trained in (the weights are the "
                          "same): `shared` runs an R-CNN detector Fast R-CNN's way (set its pyramid with --scales), "
                          "`rcnn` a shared-mode one the paper's way (default: each checkpoint's own mode).")(f)
    return f


def _proposal_source(spec: str | None, weights: str | None, opts, model, echo: bool = True,
                     err: bool = False) -> ProposalSource:
    """``--proposals``/``--opt`` as a :class:`ProposalSource`, defaulting to how the detector's training proposals
    were made (and saying so, on stderr with ``err``)."""
    spec, options, note = detector_proposals(spec, parse_options(opts), model)
    if note and echo:
        click.echo(note, err=err)
    return ProposalSource(spec, weights, options)


def load_cli_detectors(weights: tuple[str, ...], device, scales: str | None, max_size: int | None,
                       mode: str | None = None):
    """The detector (or ensemble) of ``--weights``, every member in ``--mode`` when given, with
    ``--scales``/``--max-size`` applied to its shared-mode members; one of those options without any shared-mode
    member is an error."""
    over = {}
    if scales:
        over["scales"] = int_list(scales, "--scales")
    if max_size:
        over["max_size"] = int(max_size)
    if scales and max_size and max(over["scales"]) > max_size:
        raise GdetError(f"--scales: {max(over['scales'])} is above --max-size {max_size}, so no image is rescaled "
                        f"to it; raise --max-size or drop the scale")
    model = load_detectors(list(weights), device, shared=over or None, mode=mode)
    members = getattr(model, "members", [model])
    if over and not any(m.mode == "shared" for m in members):
        option = "--scales" if scales else "--max-size"
        if mode == "rcnn":
            raise GdetError(f"{option}: sets shared mode's image pyramid, but --mode rcnn scores warped crops")
        raise GdetError(f"{option}: sets a shared-mode detector's pyramid, but {', '.join(weights)} "
                        f"{'is an rcnn-mode detector' if len(weights) == 1 else 'are rcnn-mode detectors'} "
                        f"(add --mode shared to run {'it' if len(weights) == 1 else 'them'} in shared mode)")
    return model


@click.command("detect", context_settings=CONTEXT)
@click.option("--image", "images", multiple=True, required=True,
              help="Image file, folder (its images, recursively) or glob pattern in quotes (repeatable).")
@click.option("--weights", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Detector checkpoint (repeatable: several form an ensemble, probabilities averaged).")
@proposal_options
@detection_options()
@shared_options
@SOFT_NMS
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for the images with boxes drawn (OUT/<image stem>.png).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write the detections as a COCO-style result file that `gdet eval --dets` reads "
                   "(image_id = file stem; - for stdout, instead of the tables).")
@device_options
def detect(images, weights, proposals, proposal_weights, opts, max_proposals, score_thr, nms_iou, max_dets,
           mode, scales, max_size, soft_nms, out, json_path, device, precision, compile_, cuda_graphs,
           workers):
    """Detect objects: proposals -> region scores (warped crops, or the shared-feature mode the checkpoint says)
    -> softmax -> per-class NMS -> top detections.

    Example: gdet detect --image photos/ --weights gdet/assets/detector_synth_fp16.pth --out drawn/ --json d.json
    """
    paths = expand_image_paths(images)
    ids = image_ids_for(paths) if json_path or out else [Path(p).stem for p in paths]  # names files
    if out:
        refuse_overwriting_inputs({"--out": [Path(out) / f"{i}.png" for i in ids]}, {"--image": paths})
    dev = resolve_device(device)
    model = optimize(load_cli_detectors(weights, dev, scales, max_size, mode), device=dev, precision=precision,
                     compile=compile_, cuda_graphs=cuda_graphs)
    to_stdout = json_path == "-"  # the JSON is the output: every other line goes to stderr, tables nowhere
    source = _proposal_source(proposals, proposal_weights, opts, model, err=to_stdout)
    click.echo(f"mode: {model.describe_mode()}", err=to_stdout)
    records = [ImageRecord(image_id=i, path=p, width=0, height=0) for i, p in zip(ids, paths)]

    def show(index, rgb, dets):
        if not to_stdout:
            tqdm.write(format_table(paths[index], detections_to_rows(dets, model.class_names)))  # above the bar
        if out:
            save_png(draw_detections(rgb, dets, model.class_names), Path(out) / f"{ids[index]}.png")

    dets = detect_records(model, records, source, device=dev, score_thr=score_thr, nms_iou=nms_iou,
                          max_dets=max_dets, soft_nms=soft_nms, max_proposals=max_proposals,
                          workers=workers, on_image=show)
    if out:
        click.echo(f"drew {len(paths)} image(s) in {out}", err=to_stdout)
    if json_path:
        n = write_detections(json_path, ids, dets, model.class_names)
        if not to_stdout:
            click.echo(f"wrote {json_path}: {n} detections on {len(paths)} image(s)")
    note_shipped_weights(weights)  # after the results, so that a bad input's error stays the only line


def _score(records, dets, class_names, metrics: list[str]) -> dict:
    """Evaluate detections with each metric; print the tables; return ``{metric: result}``."""
    results = {}
    for metric in metrics:
        ev = build_evaluator(metric, class_names)
        ev.reset()
        ev.process(records, dets)
        results[metric] = ev.evaluate()
        click.echo(format_metrics(results[metric]))
    return results


@click.command("test", context_settings=CONTEXT)
@click.option("--data", required=True, type=click.Path(), help="Dataset: VOC root, COCO .json, or a "
              "`gdet data synth` folder.")
@click.option("--split", default="val", show_default=True, help="Split to detect.")
@click.option("--weights", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Detector checkpoint (repeatable: ensemble).")
@proposal_options
@detection_options(EVAL_SCORE_THR, EVAL_MAX_PROPOSALS)
@shared_options
@SOFT_NMS
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Only the first N images.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Result file (COCO-style JSON list; `gdet eval --dets`, `gdet fuse`).")
@click.option("--metrics", default="voc,coco", show_default=True,
              help="Metrics printed (voc07, voc, coco, ilsvrc; empty for none).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write the metrics as JSON (- for stdout).")
@device_options
def test(data, split, weights, proposals, proposal_weights, opts, max_proposals, score_thr, nms_iou, max_dets, mode,
         scales, max_size, soft_nms, limit, out, metrics, json_path, device, precision, compile_, cuda_graphs,
         workers):
    """Detect every image of a dataset split, write COCO-format results and print their mAP.

    Under torchrun the images are dealt out over the processes (each on its own GPU, ``LOCAL_RANK``) and rank 0
    gathers the detections and writes the same file as one process would.
    """
    metric_list = parse_metrics(metrics)
    # The ground truth as written (clip=False): scores equal the official tools' on boxes past the image edge.
    dset = load_detection_set(data, split=split, clip=False)
    records = dset.records[:limit] if limit else dset.records
    with process_group_from_env() as info:
        dev = resolve_device(device, info.local_rank)
        model = optimize(load_cli_detectors(weights, dev, scales, max_size, mode), device=dev, precision=precision,
                         compile=compile_, cuda_graphs=cuda_graphs)
        if list(model.class_names) != list(dset.class_names):
            raise GdetError(f"{weights[0]}: trained for classes {model.class_names}, but {data} has "
                            f"{dset.class_names}")
        source = _proposal_source(proposals, proposal_weights, opts, model, echo=info.rank == 0)
        if info.rank == 0:
            click.echo(f"mode: {model.describe_mode()}")
        mine = detect_records(model, records, source, device=dev, score_thr=score_thr, nms_iou=nms_iou,
                              max_dets=max_dets, soft_nms=soft_nms, max_proposals=max_proposals, rank=info.rank,
                              world_size=info.world_size, workers=workers)
        dets = gather_to_rank0([{k: v.cpu() for k, v in d.items()} for d in mine])
    if dets is None:  # not rank 0
        return
    n = write_results(out, records, dets, dset.class_names, dset.category_ids)
    click.echo(f"wrote {out}: {n} detections on {len(records)} images")
    results = _score(records, dets, dset.class_names, metric_list)
    if json_path:
        write_json(jsonable({"data": str(data), "split": split, "weights": [str(w) for w in weights],
                             "dets": str(out), "images": len(records), **results}), json_path)


def _score_weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise GdetError(f"--score-weights {text!r}: expected comma-separated numbers") from None
    return check_score_weights(weights, "--score-weights", given=text)


@click.command("fuse", context_settings=CONTEXT)
@click.argument("dets", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(),
              help="The ground-truth dataset the results refer to (for image ids and classes).")
@click.option("--split", default="val", show_default=True)
@click.option("--method", type=click.Choice(["nms", "wbf"]), default="nms", show_default=True,
              help="nms: concatenate, per-class NMS; wbf: weighted boxes fusion.")
@click.option("--iou", "iou_thr", type=FloatRange(0, 1), default=None,
              help="NMS IoU (default 0.3) or WBF cluster IoU (0.55).")
@click.option("--score-weights", default=None,
              help="Comma-separated score weight per file, each >= 0 (default: equal; 0 leaves a file out).")
@click.option("--max-dets", default=DEFAULTS["max_dets"], show_default=True, type=click.IntRange(min=1))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Fused result file (COCO-style JSON).")
@click.option("--metrics", default="", help="Metrics to print for the fused result (e.g. voc,coco).")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write the metrics as JSON (- for stdout).")
def fuse(dets, data, split, method, iou_thr, score_weights, max_dets, out, metrics, json_path):
    """Fuse COCO-style detection result files of the same images (offline ensembling)."""
    weights = _score_weights(score_weights)  # checked before anything is read
    dset = load_detection_set(data, split=split, check_images=False)
    per_model = [read_results(p, dset.records, dset.class_names, dset.category_ids) for p in dets]
    fused = fuse_detections(per_model, method=method, iou_thr=iou_thr, weights=weights, max_dets=max_dets)
    n = write_results(out, dset.records, fused, dset.class_names, dset.category_ids)
    click.echo(f"wrote {out}: {n} detections fused from {len(dets)} files ({method})")
    metric_list = parse_metrics(metrics)
    results = _score(dset.records, fused, dset.class_names, metric_list)
    if json_path:
        write_json(jsonable({"data": str(data), "split": split, "inputs": [str(d) for d in dets], "method": method,
                             "out": str(out), **results}), json_path)
