"""``gdet models``: every registered backbone with its parameters and multiply-adds, counted on CPU."""
from __future__ import annotations

import click
import torch
from torch import Tensor, nn

from gdet.backbones import build_backbone, count_macs, count_parameters, get_backbone_builder, list_backbones
from gdet.cli import CONTEXT, write_json


class _OnMeta(nn.Module):
    """Feeds ``count_macs``'s CPU probe image to a model built on the meta device."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.input_size = model.input_size

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to("meta"))


def describe_backbone(name: str, device: str = "meta") -> dict:
    """Count one backbone (1000 classes, its default aux setting).

    The model is built on the ``meta`` device by default: tensors there have shapes but no data, so building
    and the counted forward pass cost no arithmetic and no memory, and torch's FlopCounterMode sees exactly
    the operators (and counts) of a CPU pass (``device="cpu"`` does the real pass; a test checks they agree).

    Returns:
        dict with ``name``, ``params`` (with aux heads), ``params_no_aux``, ``macs`` (one 1 x 3 x S x S
        eval-mode forward at the default input size S), ``input_size``, ``stride``, ``out_channels``,
        ``aux_heads`` (their number), ``input`` (the normalisation it expects).
    """
    get_backbone_builder(name)  # unknown name -> GdetError listing the known ones
    with torch.device(device):
        model = build_backbone(name)
    scale = "0-1" if model.input_scale == 1.0 else "0-255"
    return {
        "name": name,
        "params": count_parameters(model, include_aux=True),
        "params_no_aux": count_parameters(model, include_aux=False),
        "macs": count_macs(_OnMeta(model) if device == "meta" else model),
        "input_size": model.input_size,
        "stride": model.stride,
        "out_channels": model.out_channels,
        "aux_heads": len(model.aux_heads()),
        "input": f"{scale}, mean={list(model.mean)}, std={list(model.std)}",
    }


def format_table(rows: list[dict]) -> str:
    """A plain-text table (also valid Markdown) of :func:`describe_backbone` rows."""
    header = ["backbone", "params", "params w/o aux", "aux heads", "GMACs", "input", "stride", "channels"]
    body = [[r["name"], f"{r['params']:,}", f"{r['params_no_aux']:,}", str(r["aux_heads"]),
             f"{r['macs'] / 1e9:.2f}", str(r["input_size"]), str(r["stride"]), str(r["out_channels"])]
            for r in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep, *(line(row) for row in body)])


@click.command("models", context_settings=CONTEXT)
@click.argument("names", nargs=-1)
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Write the rows as a JSON list (- for stdout instead of the table).")
def models(names: tuple[str, ...], json_path: str | None) -> None:
    """List registered backbones (or only NAMES) with parameters and multiply-adds at the default input size.

    Multiply-adds are counted by torch's FlopCounterMode over one eval-mode forward pass (shapes only, on the
    meta device, so the whole table takes seconds), not typed in; "params w/o aux" leaves out the auxiliary
    classifiers used only in training.
    """
    rows = [describe_backbone(name) for name in (names or list_backbones())]
    if json_path:
        write_json(rows, json_path)
    if json_path != "-":
        click.echo(format_table(rows))
