"""Inference-only fp16 copies of training checkpoints, small enough to ship in git.

``gdet export --weights SRC --format fp16 --out DST [--raw]`` keeps the weights (the Polyak-averaged ones when
the checkpoint has them, unless ``--raw``) in fp16 without aux heads, plus the metadata the loaders need (task,
backbone, class names, preprocessing, detector settings, config); optimizer, scheduler and RNG states are dropped.
Works for detection checkpoints (``tools/train_det.py``), classification ones (``tools/train_cls.py``) and
MultiBox ones (``tools/train_multibox.py``); all load as before (``gdet detect`` / ``gdet classify`` /
``--weights``), in fp32.
"""
from __future__ import annotations

import os

from gdet.errors import CheckpointError

__all__ = ["export_checkpoint"]

_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
_META = ("task", "backbone", "class_names", "preprocessing", "detector", "config", "epoch", "best_acc1", "metrics",
         "priors", "head", "input_size", "best_recall")  # the last four: MultiBox
_TASKS = ("detect", "classify", "multibox")
_KEEP_FP32 = ("priors",)  # buffers whose precision matters more than their size


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, use_ema: bool = True, half: bool = True) -> int:
    """Write the inference-only copy of ``src`` to ``dst``. Returns its size in bytes.

    Args:
        src: a detection, classification or MultiBox training checkpoint.
        dst: the fp16 checkpoint to write (atomically).
        use_ema: take the Polyak-averaged weights when the checkpoint has them.
        half: store floating-point weights in fp16 (the MultiBox priors stay fp32).
    """
    from gdet.engine.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    if ckpt.get("task") not in _TASKS:
        raise CheckpointError(f"{src}: not a gdet detection, classification or MultiBox checkpoint "
                              f"(task={ckpt.get('task')!r})")
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    out_state = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k.removeprefix("backbone.").startswith(_AUX_PREFIXES):
            continue
        out_state[k] = v.half() if half and v.is_floating_point() and k not in _KEEP_FP32 else v
    kw = dict(ckpt.get("backbone_kwargs") or {})
    kw["aux_logits"] = False
    out = {k: ckpt[k] for k in _META if k in ckpt}
    out.update(model=out_state, backbone_kwargs=kw, exported_from=str(src), weights="ema" if use_ema and
               ckpt.get("ema") is not None else "raw")
    save_checkpoint(out, dst)
    return os.path.getsize(dst)
