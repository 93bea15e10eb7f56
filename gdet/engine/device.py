"""Device selection and mixed-precision context."""
from __future__ import annotations

import contextlib

import torch

from gdet.errors import GdetError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's local rank) when present, else CPU; asking for CUDA without one fails."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GdetError("device 'cuda' requested but no CUDA GPU is available (use device=cpu)")
        return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if name != "cpu":
        raise GdetError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    return torch.device("cpu")


def autocast(device: torch.device, precision: str = "fp32"):
    """Autocast context for ``precision`` in {fp32, bf16, fp16}; fp16 on CPU falls back to bf16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise GdetError(f"unknown precision {precision!r} (use fp32, bf16 or fp16)")
    dtype = torch.float16 if precision == "fp16" and device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)
