"""``gdet export``: a checkpoint as ONNX, TorchScript or an fp16 inference-only checkpoint."""
from __future__ import annotations

import click

FORMATS = ("onnx", "torchscript", "fp16")


@click.command("export")
@click.option("--weights", required=True, help="Classification, detection or MultiBox checkpoint (.pth).")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="onnx (needs gdet[export]), torchscript, or fp16 (a half-precision gdet checkpoint).")
@click.option("--out", required=True, help="File to write (.onnx, .pt or .pth).")
@click.option("--raw", is_flag=True, help="Export the raw weights instead of the Polyak-averaged ones.")
@click.option("--input-size", default=None, type=click.IntRange(16),
              help="Classifier input size in the exported graph (default: the checkpoint's).")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(12), help="ONNX opset version.")
def export(weights, fmt, out, raw, input_size, opset):
    """Export a checkpoint for inference in eval form (no aux heads), then check the file.

    onnx / torchscript: the network with a dynamic batch dimension, outputs as plain tensors (classifier:
    probs; detector: probs [+ deltas] of warped crops; MultiBox: boxes, scores), the preprocessing and class
    names in the file's metadata. The file is run by onnxruntime (CPU) or torch.jit.load on random inputs and
    compared with the PyTorch model; an export that differs by more than 1e-4 (relative) is not written.
    """
    if fmt == "fp16":
        from gdet.export.checkpoint import export_checkpoint

        size = export_checkpoint(weights, out, use_ema=not raw)
        click.echo(f"wrote {out} ({size / 1e6:.1f} MB)")
        return
    from gdet.export.nets import spec_from_checkpoint

    if fmt == "onnx":
        from gdet.export.onnx import export_onnx, require_onnx

        require_onnx()  # before loading the model: the missing package is the first thing to say
        spec = spec_from_checkpoint(weights, use_ema=not raw, input_size=input_size)
        res = export_onnx(spec, out, opset=opset)
        runtime = "onnxruntime (CPU)"
    else:
        from gdet.export.torchscript import export_torchscript

        spec = spec_from_checkpoint(weights, use_ema=not raw, input_size=input_size)
        res = export_torchscript(spec, out)
        runtime = "torch.jit.load"
    meta = spec.metadata
    click.echo(f"wrote {out} ({res['bytes'] / 1e6:.1f} MB): {meta['task']} {meta['backbone']}, "
               f"input [batch, 3, {spec.input_size}, {spec.input_size}], outputs {', '.join(spec.output_names)}")
    errs = ", ".join(f"{k} {v:.1e}" for k, v in res["errors"].items())
    click.echo(f"check: {runtime} equals PyTorch on random inputs (batches of 3 and 1): "
               f"max relative error {errs} (<= 1e-4)")


if __name__ == "__main__":
    from gdet.cli import run_guarded

    run_guarded(export.main, standalone_mode=True)
