"""COCOeval's ``evaluate()`` + ``accumulate()`` for boxes, vectorised with numpy; the same numbers as pycocotools.

pycocotools walks every (image, category, area range) in Python and matches detection by detection, which
takes minutes for 500k detections. Here the greedy matching runs one score rank at a time for all (image,
category) groups and all 10 IoU thresholds at once, and accumulation is one array pass per (category, area,
maxDets). The result fills a real :class:`pycocotools.cocoeval.COCOeval` (its ``params`` and ``eval``), so
``summarize()`` is pycocotools' own. Tests compare every number with pycocotools on random data (crowd regions,
area ranges, equal scores, more than 100 detections per image and class).

Rules reproduced from cocoeval.py:
- per (image, category): detections sorted by decreasing score (stable), the first ``maxDets[-1]`` kept;
- ground truth is "ignored" if crowd or its ``area`` is outside the range; non-ignored boxes are tried first;
  a detection takes the unmatched box (crowd boxes may match many times) with the largest IoU >= t, the last
  such box on equal IoU; an ignored match makes the detection ignored, as does an unmatched detection whose
  own area (w*h) is outside the range;
- box IoU as maskApi.c's bbIou (crowd: intersection over the detection's area);
- accumulation over images in increasing id order, stable sort by score, precision envelope sampled at the
  101 recall thresholds (``searchsorted(side="left")``), ``tp / (tp + fp + eps)``.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np

from gdet.evaluation.base import FlatData


def _xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _bb_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """maskApi.c bbIou on xywh boxes, broadcast (``d[..., 4]``, ``g[..., 4]``, ``crowd[...]``)."""
    da = d[..., 2] * d[..., 3]
    ga = g[..., 2] * g[..., 3]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    i = w * h
    u = np.where(crowd, da, da + ga - i)
    ok = (w > 0) & (h > 0)
    return np.where(ok, i / np.where(ok, u, 1.0), 0.0)


def _last_argmax(cand: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the last maximum of ``val`` over candidates along the last axis, and whether there is one."""
    v = np.where(cand, val, -np.inf)[..., ::-1]
    return v.shape[-1] - 1 - v.argmax(axis=-1), cand.any(axis=-1)


def fast_cocoeval(flat: FlatData, image_ids: np.ndarray, num_classes: int,
                  max_dets: tuple[int, int, int] = (1, 10, 100)):
    """Run COCO box evaluation on ``flat``.

    Args:
        flat: ground truth and detections (``gt_ignore`` = crowd, ``gt_area`` = COCO area).
        image_ids (ndarray[num_images]): COCO image id of each image (sets the accumulation order).
        num_classes: K; category k is label k.
        max_dets: COCOeval's ``params.maxDets`` (increasing; ``summarize`` reads the three of them).

    Returns:
        a :class:`pycocotools.cocoeval.COCOeval` whose ``eval`` and ``stats`` are filled (``evalImgs`` empty).
    """
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(iouType="bbox")
    p = E.params
    p.imgIds = sorted(int(i) for i in image_ids)
    p.catIds = list(range(1, num_classes + 1))
    p.maxDets = [int(m) for m in max_dets]
    thr = np.minimum(np.asarray(p.iouThrs, dtype=np.float64), 1 - 1e-10)
    T, R, K, A, M = len(p.iouThrs), len(p.recThrs), num_classes, len(p.areaRng), len(p.maxDets)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    max_det = p.maxDets[-1]
    C = num_classes

    # detections: sort within (image, category) by decreasing score, stable; keep the first max_det
    dkey = flat.dt_img * C + flat.dt_labels
    dorder = np.lexsort((np.arange(dkey.size), -flat.dt_scores, dkey))
    dkey_s = dkey[dorder]
    dstart = np.flatnonzero(np.r_[True, dkey_s[1:] != dkey_s[:-1]]) if dkey_s.size else np.zeros(0, np.int64)
    drank = np.arange(dkey_s.size) - np.repeat(dstart, np.diff(np.r_[dstart, dkey_s.size]))
    keep = drank < max_det
    dorder, dkey_s, drank = dorder[keep], dkey_s[keep], drank[keep]
    d_xywh = _xywh(flat.dt_boxes[dorder])
    d_area = d_xywh[:, 2] * d_xywh[:, 3]
    d_score = flat.dt_scores[dorder]
    d_img = flat.dt_img[dorder]
    d_lab = flat.dt_labels[dorder]
    D = dorder.size

    # ground truth padded per (image, category), original order
    gkey = flat.gt_img * C + flat.gt_labels
    gorder = np.argsort(gkey, kind="stable")
    gkeys, gstarts, gcounts = np.unique(gkey[gorder], return_index=True, return_counts=True)
    G = int(gcounts.max()) if gcounts.size else 0
    g_xywh = _xywh(flat.gt_boxes)
    g_crowd = flat.gt_ignore.astype(bool)
    pad = np.full((gkeys.size + 1, max(G, 1)), -1, dtype=np.int64)
    if G:
        pad[np.repeat(np.arange(gkeys.size), gcounts), np.arange(gorder.size) - np.repeat(gstarts, gcounts)] = gorder
    if gkeys.size:  # group row of each detection; row gkeys.size (all -1) when its group has no ground truth
        pos = np.minimum(np.searchsorted(gkeys, dkey_s), gkeys.size - 1)
        d_grp = np.where(gkeys[pos] == dkey_s, pos, gkeys.size)
    else:
        d_grp = np.zeros(D, dtype=np.int64)
    gi = pad[d_grp]  # [D, G]
    gvalid = gi >= 0
    gsafe = np.maximum(gi, 0)
    ious = np.where(gvalid, _bb_iou(d_xywh[:, None, :], g_xywh[gsafe], g_crowd[gsafe]), 0.0) if G else \
        np.zeros((D, 1))
    crowd_p = g_crowd[gsafe] & gvalid

    order_img = np.empty(flat.num_images, dtype=np.int64)  # accumulation position of each image
    order_img[np.argsort(image_ids, kind="stable")] = np.arange(flat.num_images)
    # pycocotools' order per category: images by id, then rank; then a stable sort by decreasing score
    acc = np.lexsort((drank, order_img[d_img], -d_score, d_lab))
    acc_lab = d_lab[acc]
    acc_bounds = np.searchsorted(acc_lab, np.arange(K + 1))
    gt_cnt = np.bincount(flat.gt_labels, minlength=K)
    dt_cnt = np.bincount(d_lab, minlength=K)
    eps = np.spacing(1)

    # detections that have ground truth to match, grouped by their rank within (image, category)
    with_gt = np.flatnonzero(d_grp < gkeys.size)
    by_rank = with_gt[np.argsort(drank[with_gt], kind="stable")]
    rank_bounds = np.searchsorted(drank[by_rank], np.arange((int(drank.max()) + 2) if D else 1))

    for a, (lo, hi) in enumerate(p.areaRng):
        g_ig = g_crowd | (flat.gt_area < lo) | (flat.gt_area > hi)
        ig_p = g_ig[gsafe] & gvalid
        matched = np.zeros((D, T), dtype=bool)
        to_ignored = np.zeros((D, T), dtype=bool)
        gtm = np.zeros((gkeys.size + 1, T, max(G, 1)), dtype=bool)
        if G and D:
            for r in range(rank_bounds.size - 1):
                sel = by_rank[rank_bounds[r]:rank_bounds[r + 1]]
                if sel.size == 0:
                    continue
                grp = d_grp[sel]
                ge = ious[sel][:, None, :] >= thr[None, :, None]  # [n, T, G]
                taken = gtm[grp]
                v = gvalid[sel][:, None, :]
                ig = ig_p[sel][:, None, :]
                val = np.broadcast_to(ious[sel][:, None, :], ge.shape)
                j0, h0 = _last_argmax(v & ~ig & ~taken & ge, val)
                j1, h1 = _last_argmax(v & ig & (~taken | crowd_p[sel][:, None, :]) & ge, val)
                j = np.where(h0, j0, j1)
                has = h0 | h1
                matched[sel] = has
                to_ignored[sel] = has & ~h0
                n_idx, t_idx = np.nonzero(has)
                gtm[grp[n_idx], t_idx, j[n_idx, t_idx]] = True
        d_out = (d_area < lo) | (d_area > hi)
        dt_ig = to_ignored | (~matched & d_out[:, None])
        npig_all = np.bincount(flat.gt_labels[~g_ig], minlength=K)
        tp_flag = matched & ~dt_ig  # [D, T]
        fp_flag = ~matched & ~dt_ig
        for k in range(K):
            if gt_cnt[k] == 0 and dt_cnt[k] == 0:
                continue
            npig = int(npig_all[k])
            if npig == 0:
                continue
            idx = acc[acc_bounds[k]:acc_bounds[k + 1]]
            tp_k = np.ascontiguousarray(tp_flag[idx].T)  # [T, n] in accumulation order
            fp_k = np.ascontiguousarray(fp_flag[idx].T)
            rank_k, score_k = drank[idx], d_score[idx]
            for m, md in enumerate(p.maxDets):
                cut = None if md >= max_det else rank_k < md
                tp_m = tp_k if cut is None else tp_k[:, cut]
                fp_m = fp_k if cut is None else fp_k[:, cut]
                nd = tp_m.shape[1]
                if nd == 0:
                    recall[:, k, a, m] = 0
                    precision[:, :, k, a, m] = 0.0
                    scores[:, :, k, a, m] = 0.0
                    continue
                tp = np.cumsum(tp_m, axis=1).astype(np.float64)
                fp = np.cumsum(fp_m, axis=1).astype(np.float64)
                rc = tp / npig
                pr = tp / (fp + tp + eps)
                recall[:, k, a, m] = rc[:, -1]
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                ss = score_k if cut is None else score_k[cut]
                for t in range(T):
                    inds = np.searchsorted(rc[t], p.recThrs, side="left")
                    ok = inds < nd
                    # pycocotools fills q until the first index past the end, then stops
                    stop = int(np.argmin(ok)) if not ok.all() else R
                    q = np.zeros(R)
                    sc = np.zeros(R)
                    q[:stop] = pr[t, inds[:stop]]
                    sc[:stop] = ss[inds[:stop]]
                    precision[t, :, k, a, m] = q
                    scores[t, :, k, a, m] = sc
    E.eval = {"params": p, "counts": [T, R, K, A, M], "precision": precision, "recall": recall, "scores": scores}
    E._paramsEval = p
    with contextlib.redirect_stdout(io.StringIO()):
        E.summarize()
    return E
