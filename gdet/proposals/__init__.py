"""Object proposals for R-CNN: selective search, MultiBox and their union, behind one interface.

Every method is built by name and used the same way::

    proposer = build_proposer("ss")                     # or "ss_quality", "selectivesearch", "multibox", "combined"
    boxes, scores = proposer.propose(rgb_uint8_image)   # Tensor[N, 4] xyxy pixels, Tensor[N], best first

Proposal files (:func:`save_proposals` / :func:`load_proposals`) hold precomputed boxes for a dataset.
"""
from __future__ import annotations

from typing import Any, Callable

from gdet.errors import GdetError
from gdet.proposals.base import Proposer
from gdet.proposals.combined import build_combined
from gdet.proposals.files import ProposalSet, load_proposals, save_proposals
from gdet.proposals.multibox import MultiBoxProposer
from gdet.proposals.options import check_options
from gdet.proposals.selective_search import SelectiveSearch


def _ss(**kw) -> Proposer:
    return SelectiveSearch(backend="opencv", **{"mode": "fast", **kw})


def _ss_quality(**kw) -> Proposer:
    return SelectiveSearch(backend="opencv", **{"mode": "quality", **kw})


def _selectivesearch(**kw) -> Proposer:
    return SelectiveSearch(backend="selectivesearch", **kw)


def _multibox(**kw) -> Proposer:
    return MultiBoxProposer.from_checkpoint(**kw)


def _combined(**kw) -> Proposer:
    return build_combined(**kw)


PROPOSERS: dict[str, Callable[..., Proposer]] = {
    "ss": _ss,
    "ss_quality": _ss_quality,
    "selectivesearch": _selectivesearch,
    "multibox": _multibox,
    "combined": _combined,
}


def list_proposers() -> list[str]:
    """Names accepted by :func:`build_proposer`."""
    return list(PROPOSERS)


def build_proposer(name: str, **kwargs: Any) -> Proposer:
    """Build a proposal method by name.

    Args:
        name: ``"ss"`` (OpenCV fast mode, the default method), ``"ss_quality"`` (OpenCV quality mode),
            ``"selectivesearch"`` (the pure-Python package), ``"multibox"`` (needs ``weights=PATH``) or
            ``"combined"`` (selective search + top-200 MultiBox; needs ``weights=PATH``).
        **kwargs: the method's options (see :class:`~gdet.proposals.selective_search.SelectiveSearch`,
            :class:`~gdet.proposals.multibox.MultiBoxProposer`, :func:`~gdet.proposals.combined.build_combined`),
            their types and ranges checked first by :func:`~gdet.proposals.options.check_options`.
    """
    if name not in PROPOSERS:
        raise GdetError(f"unknown proposal method {name!r}; known methods: {', '.join(PROPOSERS)}")
    kwargs = check_options(name, kwargs)
    try:
        return PROPOSERS[name](**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            raise GdetError(f"proposal method {name!r}: {e}") from None
        raise
    except ValueError as e:  # an option of the wrong kind, e.g. --opt tiles=abc
        raise GdetError(f"proposal method {name!r}: bad option value in {kwargs}: {e}") from None


__all__ = ["ProposalSet", "Proposer", "build_proposer", "check_options", "list_proposers", "load_proposals",
           "save_proposals"]
