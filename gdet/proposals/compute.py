"""Proposals for a whole dataset: parallel over CPU processes, resumable, written atomically."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gdet.errors import DataError, GdetError
from gdet.io import atomic_path, load_json, save_json
from gdet.proposals.files import ProposalSet, load_proposals, save_proposals


def read_rgb(path: str) -> np.ndarray:
    """Read an image file as RGB uint8 ``[H, W, 3]`` (gdet.data's reader when present)."""
    try:
        from gdet.data import read_image  # the data package's reader (clear errors, EXIF, gray/alpha handling)
    except ImportError:
        read_image = None
    if read_image is not None:
        return np.asarray(read_image(path))
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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
    from gdet.proposals import build_proposer

    _WORKER.update(proposer=build_proposer(method, **kwargs), parts=Path(parts))


def _work(task: tuple) -> tuple[Any, int, str | None]:
    image_id, path = task
    try:
        image = read_rgb(path)
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


# --- main side ---------------------------------------------------------------------------------------------
def compute_proposals(items: Sequence[tuple[Any, str]], method: str, out: str | os.PathLike,
                      method_kwargs: dict | None = None, workers: int = 0, meta: dict | None = None,
                      keep_parts: bool = False, threads_per_worker: int = 1) -> dict:
    """Compute proposals for ``items`` = ``[(image_id, image_path), ...]`` and write them to ``out`` (.npz).

    Finished images are kept in ``<out>.parts/`` as they complete, so an interrupted run resumes where it
    stopped; an ``out`` file that already holds some of the images (same method settings) is reused too.
    Settings that differ from those of the partial results are refused rather than mixed.

    Args:
        items: image ids and paths, in the order of the output file.
        method, method_kwargs: a :func:`~gdet.proposals.build_proposer` name and its options.
        workers: worker processes (0: compute in this process).
        meta: extra metadata stored in the file (e.g. ``{"data": ..., "split": ...}``).

    Returns:
        ``{"images", "computed", "reused", "boxes_per_image", "out"}``.
    """
    from gdet.engine import progress
    from gdet.proposals import build_proposer

    out = Path(out)
    if out.suffix != ".npz":
        raise GdetError(f"{out}: the output proposal file must end in .npz")
    ids = [i for i, _ in items]
    if len(set(ids)) != len(ids):
        raise DataError("duplicate image ids in the dataset")
    method_kwargs = dict(method_kwargs or {})
    settings = build_proposer(method, **method_kwargs).config()  # validates the options before any work
    settings = json.loads(json.dumps(settings))  # as it will read back from JSON
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    cfg_path = parts / "config.json"
    if cfg_path.exists():
        old = load_json(cfg_path).get("settings")
        if old != settings:
            raise GdetError(f"{parts}: partial results were computed with other settings ({old}); "
                            f"delete the directory or use the same method options")
    else:
        save_json({"settings": settings}, cfg_path)

    previous: ProposalSet | None = None
    if out.exists():
        previous = load_proposals(out)
        old = {k: v for k, v in previous.meta.items() if k in settings}
        if old != settings:
            raise GdetError(f"{out}: exists with other method settings ({old.get('method')!r}); "
                            f"remove it or choose another --out")
    done = {p.name for p in parts.glob("*.npz")}
    todo = [(i, p) for i, p in items if _part_name(i) not in done and not (previous is not None and i in previous)]
    reused = len(items) - len(todo)
    errors: list[str] = []
    bar = progress(total=len(todo), desc=f"proposals {method}", unit="img")
    if todo and workers > 0:
        ctx = mp.get_context("spawn")  # torch and OpenCV thread pools do not survive fork() reliably
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker,
                      initargs=(method, method_kwargs, str(parts), threads_per_worker)) as pool:
            for _, _, err in pool.imap_unordered(_work, todo, chunksize=1):
                bar.update(1)
                if err:
                    errors.append(err)
                    pool.terminate()
                    break
    elif todo:
        _init_worker(method, method_kwargs, str(parts), max(1, threads_per_worker))
        for task in todo:
            _, _, err = _work(task)
            bar.update(1)
            if err:
                errors.append(err)
                break
    bar.close()
    if errors:
        raise GdetError(f"{errors[0]} (finished images are kept in {parts}; rerun to resume)")

    boxes, scores, sizes = [], [], []
    for i, _ in items:
        part = parts / _part_name(i)
        if part.exists():
            b, s, wh = _read_part(part)
        else:
            bt, st = previous[i]
            b, s, wh = bt.numpy(), st.numpy(), previous.size(i)
        boxes.append(b)
        scores.append(s)
        sizes.append(wh)
    full_meta = {**settings, **(meta or {})}
    result = ProposalSet.from_lists(ids, boxes, scores, sizes, full_meta)
    save_proposals(out, result)
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
    n = result.num_boxes()
    return {"images": len(items), "computed": len(todo), "reused": reused,
            "boxes_per_image": float(n.mean()) if len(n) else 0.0, "out": str(out)}
