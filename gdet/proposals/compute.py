"""Proposals for a whole dataset: parallel over CPU processes and torchrun ranks, resumable, written atomically."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gdet.data.image import read_image
from gdet.engine import progress
from gdet.engine.distributed import all_gather_objects
from gdet.errors import DataError, GdetError
from gdet.io import atomic_path, load_json, save_json
from gdet.parallel import rank_world, shard
from gdet.proposals import build_proposer, check_options
from gdet.proposals.files import ProposalSet, load_proposals, save_proposals


def parts_dir(out: str | os.PathLike) -> Path:
    return Path(str(out) + ".parts")


def _part_name(image_id) -> str:
    return hashlib.sha1(repr(image_id).encode()).hexdigest()[:20] + ".npz"


# --- worker side -------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(method: str, kwargs: dict, parts: str, threads: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)

    _WORKER.update(proposer=build_proposer(method, **kwargs), parts=Path(parts))


def _work(task: tuple) -> tuple[Any, int, str | None]:
    image_id, path = task
    try:
        image = np.asarray(read_image(path))
        boxes, scores = _WORKER["proposer"].propose(image)
        with atomic_path(_WORKER["parts"] / _part_name(image_id)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, image_id=np.array(str(image_id)), boxes=boxes.cpu().numpy().astype(np.float32),
                         scores=scores.cpu().numpy().astype(np.float32),
                         size=np.array([image.shape[1], image.shape[0]], dtype=np.int64))
        return image_id, int(boxes.shape[0]), None
    except GdetError as e:
        return image_id, 0, str(e)


def _read_part(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    with np.load(path, allow_pickle=False) as z:
        return z["boxes"], z["scores"], tuple(int(v) for v in z["size"])


# --- across processes (torchrun) ----------------------------------------------------------------------------
def _all_gather(obj, world: int) -> list:
    if world == 1:
        return [obj]

    return all_gather_objects(obj)


def _agree(error: str | None, world: int) -> None:
    """Raise the first rank's error on every rank, so that no rank waits forever in a later collective."""
    errors = [e for e in _all_gather(error, world) if e]
    if errors:
        raise GdetError(errors[0])


def _run_guarded(fn, *args) -> tuple[Any, str | None]:
    try:
        return fn(*args), None
    except GdetError as e:
        return None, str(e)


# --- main side ---------------------------------------------------------------------------------------------
def _prepare(out: Path, parts: Path, settings: dict, read_previous: bool) -> ProposalSet | None:
    """Check (or record) the settings of the partial results and of an existing ``out``; return ``out``."""
    parts.mkdir(parents=True, exist_ok=True)
    cfg_path = parts / "config.json"
    if cfg_path.exists():
        old = load_json(cfg_path).get("settings")
        if old != settings:
            raise GdetError(f"{parts}: partial results were computed with other settings ({old}); "
                            f"delete the directory or use the same method options")
    else:
        save_json({"settings": settings}, cfg_path)
    if not (read_previous and out.exists()):
        return None
    previous = load_proposals(out)
    old = {k: v for k, v in previous.meta.items() if k in settings}
    if old != settings:
        raise GdetError(f"{out}: exists with other method settings ({old.get('method')!r}); "
                        f"remove it or choose another --out")
    return previous


def _compute(todo: list, method: str, method_kwargs: dict, parts: Path, workers: int, threads: int,
             desc: str) -> str | None:
    """Compute ``todo`` into ``parts``; returns the first error message (finished images stay in ``parts``)."""

    bar = progress(total=len(todo), desc=desc, unit="img")
    error = None
    try:
        if todo and workers > 0:
            ctx = mp.get_context("spawn")  # torch and OpenCV thread pools do not survive fork() reliably
            with ctx.Pool(min(workers, len(todo)), initializer=_init_worker,
                          initargs=(method, method_kwargs, str(parts), threads)) as pool:
                for _, _, err in pool.imap_unordered(_work, todo, chunksize=1):
                    bar.update(1)
                    if err:
                        error = err
                        pool.terminate()
                        break
        elif todo:
            _init_worker(method, method_kwargs, str(parts), max(1, threads))
            for task in todo:
                _, _, err = _work(task)
                bar.update(1)
                if err:
                    error = err
                    break
    except BaseException:
        bar.leave = False  # erased, so that the error is the only line left
        raise
    finally:
        if error is not None:
            bar.leave = False
        bar.close()
    return error


def compute_proposals(items: Sequence[tuple[Any, str]], method: str, out: str | os.PathLike,
                      method_kwargs: dict | None = None, workers: int = 0, meta: dict | None = None,
                      keep_parts: bool = False, threads_per_worker: int = 1, distributed: bool = False,
                      options_label: str = "proposal option ") -> dict:
    """Compute proposals for ``items`` = ``[(image_id, image_path), ...]`` and write them to ``out`` (.npz).

    Finished images are kept in ``<out>.parts/`` as they complete, so an interrupted run resumes where it
    stopped; an ``out`` file that already holds some of the images (same method settings) is reused too.
    Settings that differ from those of the partial results are refused rather than mixed.

    With ``distributed`` and an initialised process group (torchrun; see :func:`process_group_from_env`) this
    is a collective call: every rank must make it with the same arguments. The images that no rank has yet are
    dealt out in turn (image ``k`` of them to rank ``k % world``); each rank keeps its finished images in its own
    ``<out>.parts/`` (a shared directory on a shared file system, one per node otherwise); rank 0 collects
    the results it cannot read itself and writes ``out``, identical to a one-process run. A rerun with any
    number of ranks resumes from every rank's partial results.

    Args:
        items: image ids and paths, in the order of the output file.
        method, method_kwargs: a :func:`~gdet.proposals.build_proposer` name and its options.
        workers: worker processes per rank (0: compute in this process).
        meta: extra metadata stored in the file (e.g. ``{"data": ..., "split": ...}``).
        keep_parts: keep ``<out>.parts/`` after writing ``out``.
        threads_per_worker: torch / OpenCV threads of each worker.
        distributed: share the work over the ranks of the current process group (ignored without one).
        options_label: how an error names a method option before its key (``"--opt "`` on the command line).

    Returns:
        ``{"images", "computed", "reused", "boxes_per_image", "out", "rank_computed"}`` (the same on every
        rank but ``rank_computed``, this rank's share).
    """

    out = Path(out)
    if out.suffix != ".npz":
        raise GdetError(f"{out}: the output proposal file must end in .npz")
    ids = [i for i, _ in items]
    if len(set(ids)) != len(ids):
        raise DataError("duplicate image ids in the dataset")
    rank, world = rank_world() if distributed else (0, 1)
    method_kwargs = check_options(method, method_kwargs, options_label)  # before any worker starts
    settings = build_proposer(method, **method_kwargs).config()  # validates the options before any work
    settings = json.loads(json.dumps(settings))  # as it will read back from JSON
    parts = parts_dir(out)

    # Rank 0 first, so that on a shared file system the others find its config.json instead of racing to write it.
    previous, err = (_run_guarded(_prepare, out, parts, settings, True) if rank == 0 else (None, None))
    _agree(err, world)
    if rank != 0:
        _, err = _run_guarded(_prepare, out, parts, settings, False)
    _agree(err, world)

    done = {p.name for p in parts.glob("*.npz")}
    have = {k for k, i in enumerate(ids) if _part_name(i) in done or (previous is not None and i in previous)}
    have_by_rank = _all_gather(sorted(have), world)
    anywhere = set().union(*map(set, have_by_rank))
    todo = [k for k in range(len(items)) if k not in anywhere]
    mine = shard(todo, rank, world)
    desc = f"proposals {method}" + (f" (rank 0 of {world})" if world > 1 else "")
    err = _compute([items[k] for k in mine], method, method_kwargs, parts, workers, threads_per_worker, desc)
    if err:
        err = f"{err} (finished images are kept in {parts}; rerun to resume)"
    _agree(err, world)

    # Who sends what to rank 0: each image once, from the lowest rank holding it, nothing rank 0 holds itself.
    holders = [set(h) | set(shard(todo, r, world)) for r, h in enumerate(have_by_rank)]
    received: dict[int, tuple] = {}
    if world > 1:
        import torch.distributed as dist

        send = {}
        if rank != 0:
            for k in sorted(holders[rank]):
                if k not in holders[0] and all(k not in holders[r] for r in range(1, rank)):
                    send[k] = _read_part(parts / _part_name(ids[k]))
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(send, gathered, dst=0)
        if rank == 0:
            for part in gathered:
                received.update(part or {})

    summary, err = None, None
    if rank == 0:
        summary, err = _run_guarded(_merge, items, parts, previous, received, {**settings, **(meta or {})}, out)
    _agree(err, world)
    if world > 1:
        summary = _all_gather(summary, world)[0]
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
    return {**summary, "computed": len(todo), "reused": len(items) - len(todo), "rank_computed": len(mine)}


def _merge(items, parts: Path, previous: ProposalSet | None, received: dict, meta: dict, out: Path) -> dict:
    boxes, scores, sizes = [], [], []
    for k, (i, _) in enumerate(items):
        part = parts / _part_name(i)
        if k in received:
            b, s, wh = received[k]
        elif part.exists():
            b, s, wh = _read_part(part)
        else:
            bt, st = previous[i]
            b, s, wh = bt.numpy(), st.numpy(), previous.size(i)
        boxes.append(b)
        scores.append(s)
        sizes.append(wh)
    result = ProposalSet.from_lists([i for i, _ in items], boxes, scores, sizes, meta)
    save_proposals(out, result)
    n = result.num_boxes()
    return {"images": len(items), "boxes_per_image": float(n.mean()) if len(n) else 0.0, "out": str(out)}
