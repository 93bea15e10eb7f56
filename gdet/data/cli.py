"""``gdet data``: generate the synthetic benchmark, convert between VOC and COCO, draw ground truth."""
from __future__ import annotations

import warnings
from pathlib import Path

import click

from gdet.data.records import DataWarning
from gdet.data.synth import MAX_SIDE
from gdet.errors import DataError


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise DataError(f"--size must look like 500x375, got {value!r}") from None
    return w, h


def _read(path: Path, split: str | None, check_images: bool = True, image_root: str | None = None):
    """Load a dataset, turning the clip/drop warning into a printed line (reported once, by the summary)."""
    from gdet.data import load_detection_set

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        dset = load_detection_set(path, split=split, check_images=check_images, image_root=image_root)
    click.echo(dset.summary())
    return dset


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def data():
    """Datasets: synthetic benchmark, VOC <-> COCO conversion, ground-truth pictures."""


@data.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--images", default=1000, show_default=True, help="number of scene images")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--format", "fmt", type=click.Choice(["voc", "coco", "both"]), default="both", show_default=True)
@click.option("--size", default="500x375", show_default=True, help=f"WIDTHxHEIGHT (each side 32 to {MAX_SIDE})")
@click.option("--task", type=click.Choice(["detect", "classify"]), default="detect", show_default=True,
              help="classify: object-centred crops as an image folder out/{train,val}/<class>/")
@click.option("--val-fraction", default=0.2, show_default=True)
@click.option("--crop-size", default=128, show_default=True, type=click.IntRange(1, MAX_SIDE),
              help="classify: crop side in pixels")
@click.option("--workers", default=None, type=click.IntRange(min=0), help="processes (default: all CPUs)")
def synth(out, images, seed, fmt, size, task, val_fraction, crop_size, workers):
    """Generate the synthetic shapes benchmark (deterministic for a seed)."""
    import time

    from gdet.data.synth import SynthConfig, generate

    w, h = _size(size)
    cfg = SynthConfig(images=images, seed=seed, width=w, height=h, task=task, val_fraction=val_fraction,
                      crop_size=crop_size)
    formats = ("voc", "coco") if fmt == "both" else (fmt,)
    t0 = time.perf_counter()
    summary = generate(cfg, out, formats=formats, workers=workers)
    dt = time.perf_counter() - t0
    for split, s in summary["splits"].items():
        click.echo(f"{split}: {s['images']} images, {s['objects']} objects ({s['difficult']} difficult)")
    click.echo(f"wrote {out} in {dt:.1f} s ({images / dt * 60:.0f} images/min)")


@data.command()
@click.option("--from", "src_fmt", type=click.Choice(["voc", "coco"]), required=True)
@click.option("--to", "dst_fmt", type=click.Choice(["voc", "coco"]), required=True)
@click.option("--data", "src", required=True, type=click.Path(), help="VOC root, COCO .json, or folder of <split>.json")
@click.option("--out", required=True, type=click.Path(), help="output folder")
@click.option("--split", "splits", multiple=True,
              help="split(s) to convert (default: every VOC split / the COCO file's stem)")
@click.option("--copy-images/--no-copy-images", default=True, show_default=True,
              help="COCO output: copy images into OUT/images (else file_name is the originals' path, "
                   "absolute when outside OUT: read it back with --image-root)")
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="COCO input: folder that file_name is relative to (default: the JSON's folder); every image "
                   "must lie inside it")
def convert(src_fmt, dst_fmt, src, out, splits, copy_images, image_root):
    """Convert a detection dataset between VOC and COCO (boxes, labels, difficult/crowd flags kept)."""
    from gdet.data.coco import write_coco
    from gdet.data.voc import voc_splits, write_voc

    src, out = Path(src), Path(out)
    if not src.exists():
        raise DataError(f"{src}: not found")
    if src_fmt == "voc":
        if not (src / "Annotations").is_dir():
            raise DataError(f"{src}: not a VOC dataset (no Annotations/ folder)")
        names = list(splits) or voc_splits(src)
        if not names:
            raise DataError(f"{src}: no split files in ImageSets/Main/")
        jobs = [(name, src) for name in names]
    else:
        if src.is_file():
            jobs = [(splits[0] if splits else src.stem, src)]
        else:
            # synth.json is the generator's summary, not a split
            names = list(splits) or sorted(p.stem for p in src.glob("*.json") if p.name != "synth.json")
            if not names:
                raise DataError(f"{src}: no .json files")
            jobs = [(name, src / f"{name}.json") for name in names]
    for name, path in jobs:
        dset = _read(path, name if src_fmt == "voc" else None, image_root=image_root if src_fmt == "coco" else None)
        if dst_fmt == "voc":
            write_voc(dset, out, name)
        else:
            write_coco(dset, out / f"{name}.json", image_dir=out / "images" if copy_images else None)
        click.echo(f"wrote {dst_fmt} split {name!r} to {out}")


@data.command()
@click.option("--data", "root", required=True, type=click.Path(),
              help="VOC root, COCO .json, or folder of <split>.json")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for the PNGs")
@click.option("--split", default="val", show_default=True, help="split (VOC / folder of <split>.json)")
@click.option("--limit", "--max", "max_images", default=50, show_default=True, type=click.IntRange(min=0),
              help="only the first N images (0: all)")
def browse(root, out, split, max_images):
    """Draw ground-truth boxes and class names (ignored objects dashed, with '?') as PNGs."""
    from gdet.data.browse import browse as run

    dset = _read(Path(root), split)
    paths = run(dset, out, max_images=max_images or None)
    click.echo(f"wrote {len(paths)} PNGs to {out}")
