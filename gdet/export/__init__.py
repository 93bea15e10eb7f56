"""Deployable copies of gdet models: ONNX and TorchScript files (checked against PyTorch) and fp16 checkpoints.

Python API::

    spec = spec_from_checkpoint("runs/det/best.pth")   # or classifier_spec / detector_spec / multibox_spec
    export_onnx(spec, "det.onnx")                       # or export_torchscript(spec, "det.pt")
    export_checkpoint("runs/det/best.pth", "det_fp16.pth")

``onnx`` and ``onnxruntime`` are optional (``pip install 'gdet[export]'``) and imported only by :func:`export_onnx`.
"""
from gdet.export.checkpoint import export_checkpoint
from gdet.export.nets import ExportSpec, classifier_spec, detector_spec, multibox_spec, spec_from_checkpoint
from gdet.export.onnx import export_onnx
from gdet.export.torchscript import export_torchscript

__all__ = ["ExportSpec", "classifier_spec", "detector_spec", "export_checkpoint", "export_onnx",
           "export_torchscript", "multibox_spec", "spec_from_checkpoint"]
