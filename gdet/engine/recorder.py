"""End-of-epoch bookkeeping shared by the trainers (classification, MultiBox, detection)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

from gdet.engine.checkpoint import save_checkpoint, save_training_state
from gdet.engine.distributed import is_main_process
from gdet.engine.logger import MetricLogger, plot_curves


class EpochRecorder:
    """Writes, after every epoch: ``last.pth`` (the full training state, for exact resume), ``best.pth`` when the
    epoch's score beats every earlier one, a row of ``metrics.jsonl``, ``curves.png``, and one printed line.
    Call :meth:`record` on every rank (the checkpoint write has a barrier); files and prints come from rank 0.

    Args:
        work_dir: the run's output folder (exists).
        title: the curves' title.
        best_key: checkpoint key holding the best score so far (``"best_acc1"``, ``"best_recall"``).
        best: the best score so far (from a resumed checkpoint), ``-inf`` for a new run.
        resume: append to an existing ``metrics.jsonl`` instead of starting it afresh.
        meta: extra checkpoint keys (task, backbone, class names, ...).
        hidden: row keys left out of the printed line (still logged).
    """

    def __init__(self, work_dir: str | os.PathLike, *, title: str, best_key: str = "best_score",
                 best: float = -math.inf, resume: bool = False, meta: dict[str, Any] | None = None,
                 hidden: Iterable[str] = ()):
        self.work = Path(work_dir)
        self.title, self.best_key, self.best = title, best_key, float(best)
        self.meta, self.hidden = dict(meta or {}), set(hidden)
        self.logger = MetricLogger(self.work / "metrics.jsonl", resume=resume)

    def record(self, row: dict[str, Any], *, epoch: int, config: dict, model, optimizer, scheduler=None,
               scaler=None, ema=None, score: float | None = None) -> bool:
        """Save and log epoch ``epoch`` (1-based, the number of finished epochs). ``score`` None: the epoch does
        not compete for ``best.pth`` (e.g. not evaluated). Returns whether the score improved."""
        improved = score is not None and score > self.best
        if score is not None:
            self.best = max(self.best, float(score))
        extra = {self.best_key: self.best} if math.isfinite(self.best) else {}  # kept for resume
        ck = save_training_state(self.work / "last.pth", model=model, optimizer=optimizer, scheduler=scheduler,
                                 scaler=scaler, ema=ema, epoch=epoch, config=config, metrics=row, **extra,
                                 **self.meta)
        if improved and is_main_process():
            save_checkpoint(ck, self.work / "best.pth")
        self.logger.log(**row)
        if is_main_process():
            plot_curves(self.work / "metrics.jsonl", self.work / "curves.png", title=self.title)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if k not in self.hidden), flush=True)
        return improved
