"""The inference runtime: ``optimize(model, device=...)`` turns any gdet network into its fastest exact form and
``Runner`` feeds it fixed-size chunks (padded, optionally through CUDA graphs)."""
from gdet.runtime.fuse import fold_batch_norm, fuse_blocks, rewrite
from gdet.runtime.runtime import Runner, chunk_spans, optimize, resolve_precision

__all__ = ["Runner", "chunk_spans", "fold_batch_norm", "fuse_blocks", "optimize", "resolve_precision", "rewrite"]
