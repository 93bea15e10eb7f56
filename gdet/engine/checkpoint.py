"""Checkpoints: dicts written atomically, read with errors that name the file and the problem.

gdet's format is a dict with ``"format": "gdet"`` and at least ``"model"`` (a state dict). Training adds
``"ema"``, ``"optimizer"``, ``"scheduler"``, ``"scaler"``, ``"epoch"``, ``"rng"``, ``"config"``,
``"class_names"``, ``"backbone"`` (registry name), ``"backbone_kwargs"`` and ``"preprocessing"``.
A plain state dict (e.g. torchvision's ``googlenet-*.pth``) is accepted wherever weights are loaded.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gdet.backbones.base import is_aux_key
from gdet.engine.distributed import all_gather_objects, barrier, is_main_process, unwrap_model
from gdet.engine.ema import ema_state, load_ema_state
from gdet.errors import CheckpointError
from gdet.io import atomic_path

FORMAT = "gdet"
FORMAT_VERSION = 1


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``ckpt`` to ``path`` atomically (a temp file renamed over the target)."""
    ckpt = {"format": FORMAT, "format_version": FORMAT_VERSION, **ckpt}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def _unreadable(path: Path) -> str:
    """Why ``torch.load`` could not read ``path``, in a user's words (the unpickler's own messages are opcode
    numbers or zip-library internals)."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
        if head.startswith(b"PK"):
            try:
                with zipfile.ZipFile(path) as z:
                    names = z.namelist()
            except zipfile.BadZipFile:
                return "a damaged zip archive: truncated or corrupt"
            if not any(n.endswith("data.pkl") for n in names):
                return "a zip archive, not a torch.save file"
            return "a damaged torch.save archive: truncated or corrupt"
    except OSError as e:  # e.g. no read permission
        return f"cannot be read: {e.strerror or e}"
    if not head:
        return "the file is empty"
    if head[:1] == b"\x80":
        # The legacy (pre-zip) torch.save format opens with a pickled magic number.
        return ("a damaged legacy torch.save file: truncated or corrupt" if _LEGACY_MAGIC in head
                else "a Python pickle, not a torch.save file")
    return "not a torch.save file"


_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # pickle of torch.serialization.MAGIC_NUMBER


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file. Returns a gdet checkpoint dict; a plain state dict comes back as
    ``{"model": state_dict}``. A missing, truncated or foreign file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        # A weights file is data: the restricted unpickler builds tensors and plain containers only, so a file
        # carrying a pickled callable is refused instead of running it.
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        what = _unsafe_global(str(e))
        if not what:  # not a pickle with a disallowed global: some other file (ONNX, text, truncated)
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_unreadable(path)})") from None
        hint = " (save model.state_dict(), not the model)" if what.startswith("torch.nn.") else ""
        raise CheckpointError(f"{path}: refused: the file holds Python objects other than tensors and plain data"
                              f" ({what}); only weights files are loaded{hint}") from None
    except Exception:  # a corrupt file can fail anywhere in the unpickler (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_unreadable(path)})") from None
    if isinstance(obj, nn.Module):
        obj = {"model": obj.state_dict()}
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict or a state dict, got {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        if "model" not in obj:
            raise CheckpointError(f"{path}: gdet checkpoint without model weights")
        return obj
    # Common third-party wrappers.
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            return {"model": obj[key]}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": obj}
    raise CheckpointError(f"{path}: no model weights found (keys: {', '.join(list(obj)[:8])})")


def _unsafe_global(message: str) -> str:
    """The global a refused pickle asked for (``"os.system"``), taken from torch's message, or ``""``."""
    # torch words it "unsupported GLOBAL posix.system" (a blocked module) or "Unsupported global: GLOBAL
    # torch.nn.modules.linear.Linear" (a class not allowed, e.g. a whole pickled model).
    m = re.search(r"GLOBAL ([\w.]+)", message)
    return m.group(1) if m else ""


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_model_weights(model: nn.Module, path_or_state: str | os.PathLike | dict, strict: bool = True,
                       use_ema: bool = False) -> dict[str, Any]:
    """Load weights into ``model`` from a checkpoint file, an already-read gdet checkpoint dict, or a state dict.

    ``module.`` prefixes (DDP) are stripped. With ``use_ema`` the Polyak-averaged weights are used when the
    checkpoint has them. Aux-head weights (torchvision's files carry them) are skipped when the model was
    built without aux heads. A mismatch raises :class:`CheckpointError` naming missing and unexpected keys and
    shape mismatches. Returns the checkpoint dict (for its metadata).
    """
    if isinstance(path_or_state, dict):
        name = "checkpoint" if path_or_state.get("format") == FORMAT else "state dict"
        ckpt = path_or_state if path_or_state.get("format") == FORMAT else {"model": path_or_state}
    else:
        name = str(path_or_state)
        ckpt = load_checkpoint(path_or_state)
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    state = _strip_prefix(_strip_prefix(state, "module."), "_orig_mod.")
    own = model.state_dict()
    if not any(is_aux_key(k) for k in own):
        state = {k: v for k, v in state.items() if not is_aux_key(k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or shapes):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch ({len(shapes)}): {_short(shapes)}")
        arch = ckpt.get("backbone")
        hint = f" (checkpoint is for backbone {arch!r})" if arch else ""
        raise CheckpointError(f"{name}: weights do not fit {type(model).__name__}{hint}: " + "; ".join(parts))
    if not strict:
        state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
        if not state:
            arch = ckpt.get("backbone")
            raise CheckpointError(f"{name}: no weight fits {type(model).__name__}"
                                  f"{f' (checkpoint is for backbone {arch!r})' if arch else ''}")
    model.load_state_dict(state, strict=strict)
    return ckpt


def _short(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA), for exact resume."""
    import random

    import numpy as np

    # numpy's state is stored as plain values and a tensor so that the checkpoint loads with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(*, model: nn.Module, optimizer=None, scheduler=None, scaler=None, ema=None, epoch: int = 0,
                   config: dict | None = None, **extra) -> dict[str, Any]:
    """Everything needed to continue a run exactly: weights (unwrapped from DDP/compile), Polyak-averaged
    weights, optimizer, scheduler, GradScaler, the number of finished epochs, and RNG states of every rank.

    Must be called on **every** rank when distributed (RNG states are gathered); ``extra`` adds task keys
    (``task``, ``class_names``, ``backbone``, ``backbone_kwargs``, ``preprocessing``, metrics, ...).
    """

    rngs = all_gather_objects(rng_state())
    ckpt: dict[str, Any] = {
        "model": unwrap_model(model).state_dict(),
        "ema": ema_state(ema) if ema is not None else None,
        "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "rng": rngs[0],
        "rng_all_ranks": rngs,
        "config": config,
    }
    ckpt.update(extra)
    return ckpt


def save_training_state(path: str | os.PathLike, **kwargs) -> dict[str, Any] | None:
    """Build :func:`training_state` on every rank and write it atomically from rank 0 only (then a barrier).
    Returns the dict on rank 0, ``None`` elsewhere."""

    ckpt = training_state(**kwargs)
    if is_main_process():
        save_checkpoint(ckpt, path)
    barrier()
    return ckpt if is_main_process() else None


def resume_training_state(path_or_ckpt: str | os.PathLike | dict, *, model: nn.Module, optimizer=None,
                          scheduler=None, scaler=None, ema=None, restore_rng: bool = True,
                          name: str | None = None) -> dict[str, Any]:
    """Load a :func:`training_state` checkpoint into the given objects (model may be DDP-wrapped) and restore
    this rank's RNG state. Returns the checkpoint; training continues at epoch ``ckpt["epoch"]``. ``name`` names
    a checkpoint given as a dict in errors."""
    import torch.distributed as dist


    ckpt = load_checkpoint(path_or_ckpt) if not isinstance(path_or_ckpt, dict) else path_or_ckpt
    name = name or (path_or_ckpt if not isinstance(path_or_ckpt, dict) else "checkpoint")
    if ckpt.get("optimizer") is None or "epoch" not in ckpt:
        raise CheckpointError(f"{name}: not a training checkpoint (no optimizer state/epoch); cannot resume from it")
    load_model_weights(unwrap_model(model), ckpt["model"])
    if optimizer is not None:
        # The checkpoint gives the optimizer's state (momentum buffers, steps); the hyperparameters of each group
        # (lr, momentum, weight decay) stay those the optimizer was built with from the run's config.
        built = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:  # other parameter groups: another network, or no_decay_norm_bias changed
            raise CheckpointError(f"{name}: its optimizer state does not fit this run's parameters ({e})") from None
        for group, hyper in zip(optimizer.param_groups, built):
            group.update(hyper)
    if scheduler is not None and ckpt.get("scheduler") is not None:
        # Likewise the position on the schedule comes from the checkpoint, the schedule itself (a LambdaLR's
        # multiplier and base lrs) from the config; the caller sets the lr there (optim.set_schedule_position).
        state = {k: v for k, v in ckpt["scheduler"].items() if k not in ("lr_lambdas", "base_lrs")}
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is not None:
            state["lr_lambdas"] = [None] * len(lambdas)
        scheduler.load_state_dict(state)
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if ema is not None:
        if ckpt.get("ema") is not None:
            load_ema_state(ema, ckpt["ema"], ckpt.get("ema_n_averaged", 1))
        else:  # the run had no averaging: start it from the current weights
            ema.module.load_state_dict(unwrap_model(model).state_dict())
    if restore_rng and ckpt.get("rng") is not None:
        rank = dist.get_rank() if dist.is_initialized() else 0
        states = ckpt.get("rng_all_ranks") or [ckpt["rng"]]
        set_rng_state(states[rank] if rank < len(states) else states[0])
    return ckpt


# Classifier and aux-classifier parameters: a fine-tuned network re-initialises them when its class count differs.
HEAD_PREFIXES = ("fc.", "aux.", "aux1.", "aux2.", "AuxLogits.")


def load_start_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True, reinit_head: bool = False,
                       head_prefixes: tuple[str, ...] = HEAD_PREFIXES, log=print,
                       ckpt: dict[str, Any] | None = None) -> tuple[int, int]:
    """Load the start weights of a training run (``weights=``) into ``model`` and say how many tensors loaded.

    ``path`` is a classification checkpoint, a plain state dict, or a detector (``gdet train det``), whose backbone
    is taken (``ckpt``: the file, already loaded with :func:`load_checkpoint`).

    Classifier-head tensors (``head_prefixes``) that are missing, unexpected or of another shape are expected
    (fine-tuning to another class count re-initialises them); with ``reinit_head`` the classifier layers among
    them (first dimension ``model.num_classes``) are never loaded, as R-CNN replaces its classifier. Any
    other tensor that does not fit makes the load partial: refused with ``strict`` (``weights_strict: true``),
    loaded and reported otherwise.

    Returns:
        ``(loaded, total)``: tensors taken from the file, tensors in ``model``'s state dict.
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    state = _strip_prefix(_strip_prefix(ckpt["model"], "module."), "_orig_mod.")
    if ckpt.get("task") == "detect":  # a detector's state dict: backbone.*, bbox_head.*
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = model.state_dict()
    head = lambda k: k.startswith(head_prefixes)  # noqa: E731
    n_cls = getattr(model, "num_classes", None)
    classifier = lambda k: head(k) and own[k].ndim >= 1 and own[k].shape[0] == n_cls  # noqa: E731
    fits = {k: v for k, v in state.items() if k in own and getattr(v, "shape", None) == own[k].shape
            and not (reinit_head and classifier(k))}
    missing = [k for k in own if k not in fits and not head(k)]
    unexpected = [k for k in state if k not in own and not head(k)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and not head(k) and getattr(state[k], "shape", None) != own[k].shape]
    missing = [k for k in missing if k not in state]  # a shape mismatch is listed once, under shapes
    name = type(model).__name__
    if not fits:
        arch = ckpt.get("backbone")
        raise CheckpointError(f"{path}: no weight fits {name}{f' (checkpoint is for backbone {arch!r})' if arch else ''}")
    if missing or unexpected or shapes:
        parts = [f"{what} ({len(keys)}): {_short(keys, 3)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
        arch = ckpt.get("backbone")
        problem = (f"only {len(fits)}/{len(own)} tensors of {name} fit"
                   f"{f' (checkpoint is for backbone {arch!r})' if arch else ''} ({'; '.join(parts)})")
        if strict:
            raise CheckpointError(f"{path}: {problem}; set weights_strict=false to load them anyway")
        log(f"weights: warning: {problem}")
    model.load_state_dict(fits, strict=False)
    reinit = [k for k in own if k not in fits and head(k)]
    log(f"weights: loaded {len(fits)}/{len(own)} tensors from {path}"
        + (f" ({len(reinit)} classifier-head tensors re-initialised)" if reinit else ""))
    return len(fits), len(own)
