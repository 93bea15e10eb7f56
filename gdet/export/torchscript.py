"""TorchScript export (traced eval-form wrapper), checked by loading it back with ``torch.jit.load``."""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from gdet.errors import GdetError
from gdet.export.nets import ExportSpec
from gdet.export.verify import check_outputs
from gdet.io import atomic_path

__all__ = ["METADATA_FILE", "export_torchscript", "read_metadata"]

METADATA_FILE = "gdet.json"  # the ``_extra_files`` entry holding the metadata


def export_torchscript(spec: ExportSpec, out: str | os.PathLike, check: bool = True) -> dict[str, Any]:
    """Trace ``spec.module`` and save it with the metadata as ``_extra_files["gdet.json"]``.

    Tracing records plain tensor operations; the wrappers have no data-dependent control flow, and the batch
    dimension stays symbolic (the check runs batch sizes other than the traced one). Written to a temporary
    name, loaded back and checked against ``spec.reference``, then renamed to ``out``.

    Returns:
        ``{"out", "bytes", "errors": {output: relative error}}``.
    """
    out = Path(out)
    example = torch.randn(2, 3, spec.input_size, spec.input_size)
    errors: dict[str, float] = {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(spec.module.eval(), (example,), check_trace=False)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            torch.jit.save(traced, str(tmp), _extra_files={METADATA_FILE: json.dumps(spec.metadata, sort_keys=True)})
            loaded = torch.jit.load(str(tmp), map_location="cpu") if check else None
        if loaded is not None:
            errors = check_outputs(loaded, spec, f"{out} (torch.jit.load)")
    return {"out": str(out), "bytes": out.stat().st_size, "errors": errors}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The gdet metadata of an exported TorchScript file, read from its zip archive without loading the model."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)
            if name is None:
                raise GdetError(f"{path}: no gdet metadata (extra/{METADATA_FILE}); not written by gdet export")
            return json.loads(z.read(name))
    except zipfile.BadZipFile:
        raise GdetError(f"{path}: not a TorchScript file") from None
