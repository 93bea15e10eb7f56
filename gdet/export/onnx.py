"""ONNX export (the TorchScript-based exporter: no onnxscript, works offline), checked with onnxruntime on CPU."""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from gdet.errors import GdetError
from gdet.export.nets import INPUT_NAME, ExportSpec
from gdet.export.verify import check_outputs
from gdet.io import atomic_path

__all__ = ["export_onnx", "flat_metadata", "require_onnx"]

OPSET = 17
MISSING = "onnx export needs onnx and onnxruntime: pip install 'gdet[export]'"


def require_onnx():
    """``(onnx, onnxruntime)``, or a one-line :class:`GdetError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise GdetError(MISSING) from None
    return onnx, onnxruntime


def flat_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """String key/value pairs for ONNX ``metadata_props``: ``gdet`` holds the whole JSON; the preprocessing
    fields and class names are repeated as their own keys so that any ONNX viewer shows them."""
    pre = meta.get("preprocessing", {})
    flat = {"gdet": json.dumps(meta, sort_keys=True), "task": str(meta.get("task", "")),
            "backbone": str(meta.get("backbone", "")), "class_names": json.dumps(meta.get("class_names", []))}
    for key in ("input_size", "mean", "std", "input_scale"):
        if key in pre:
            flat[key] = json.dumps(pre[key])
    return flat


def export_onnx(spec: ExportSpec, out: str | os.PathLike, opset: int = OPSET, check: bool = True) -> dict[str, Any]:
    """Write ``spec.module`` as an ONNX file with a dynamic batch dimension and gdet metadata.

    The model is built in memory, checked (``onnx.checker`` and, with ``check``, onnxruntime on CPU against
    ``spec.reference``) and only then written (atomically), so a failed export leaves ``out`` as it was.

    Returns:
        ``{"out", "bytes", "errors": {output: relative error}}``.
    """
    onnx, ort = require_onnx()
    out = Path(out)
    example = torch.randn(2, 3, spec.input_size, spec.input_size)
    names = [INPUT_NAME, *spec.output_names]
    errors: dict[str, float] = {}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notices
        try:
            torch.onnx.export(spec.module.eval(), (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                              output_names=list(spec.output_names), dynamic_axes={n: {0: "batch"} for n in names},
                              opset_version=opset, do_constant_folding=True)
        except Exception as e:  # an operator without an ONNX form at this opset, mostly
            raise GdetError(f"{out}: ONNX export (opset {opset}) failed: {str(e).strip().splitlines()[0]}") from None
    model = onnx.load_from_string(buf.getvalue())
    del buf
    for k, v in flat_metadata(spec.metadata).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    del model
    if check:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        errors = check_outputs(lambda x: sess.run(None, {INPUT_NAME: x.numpy()}), spec, f"{out} (onnxruntime)")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return {"out": str(out), "bytes": len(data), "errors": errors}
