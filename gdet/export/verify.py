"""The self-check of an export: the exported file, run by its own runtime, against the PyTorch model."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from gdet.errors import GdetError
from gdet.export.nets import ExportSpec

__all__ = ["TOLERANCE", "check_outputs", "random_inputs", "relative_error"]

TOLERANCE = 1e-4  # fp32: the exported graph may reorder sums, but not by more than this
CHECK_BATCHES = (3, 1)  # neither is the traced batch size (2), so the dynamic batch dimension is exercised too


def random_inputs(input_size: int, batches: Sequence[int] = CHECK_BATCHES, seed: int = 0) -> list[Tensor]:
    """Normal random ``Tensor[B, 3, S, S]`` batches (a normalised image has roughly unit variance)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, input_size, input_size, generator=g) for b in batches]


def relative_error(got, want) -> float:
    """``max |got - want| / max |want|`` over the whole array (0 when both are all zeros)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = float(np.abs(want).max()) if want.size else 0.0
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def check_outputs(run: Callable[[Tensor], Sequence], spec: ExportSpec, what: str,
                  tolerance: float = TOLERANCE) -> dict[str, float]:
    """Run ``run`` (the exported model) and ``spec.reference`` on random inputs; compare every output.

    Returns:
        ``{output name: max relative error over the batches}``.
    Raises:
        GdetError: an error above ``tolerance`` or a wrong number of outputs.
    """
    errors = {name: 0.0 for name in spec.output_names}
    for x in random_inputs(spec.input_size):
        with torch.no_grad():
            want = [t.detach().float().numpy() for t in spec.reference(x)]
            got = [t.detach().numpy() if isinstance(t, Tensor) else t for t in run(x)]
        if len(got) != len(want):
            raise GdetError(f"{what}: {len(got)} outputs, the PyTorch model has {len(want)}")
        for name, g, w in zip(spec.output_names, got, want):
            errors[name] = max(errors[name], relative_error(g, w))
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    if bad:
        raise GdetError(f"{what}: differs from the PyTorch model (relative error "
                        + ", ".join(f"{k} {v:.2e}" for k, v in bad.items()) + f" > {tolerance:.0e})")
    return errors
