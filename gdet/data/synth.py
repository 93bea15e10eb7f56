"""A synthetic detection benchmark: textured shapes on real photographs, deterministic per (seed, image index).

Ten classes that differ by shape and texture; colour is random, so it carries no class information::

    disc (concentric rings)   ring (solid)       triangle (checker)   star (solid)      cross (dots)
    rectangle (stripes)       crescent (gradient) heart (speckle)     hexagon (grid)    arrow (gradient)

Each image is a random crop of a scikit-image photograph or texture (zoomed, flipped, tinted, colour-jittered,
sometimes blended with a second one) with unlabelled clutter (lines and random blobs wearing the class
textures, so texture alone does not name the class), then 1-10 objects: scale log-uniform from 16 px to
3/4 of the short image side, aspect 0.6-1.6, any rotation, anti-aliased edges, drawn roughly large-to-small
so that they occlude each other, and centred anywhere up to a little outside the image (truncation).
Then blur and Gaussian noise. Ground truth per object: the tight box of its mask inside the image
(occluded parts included, parts outside the image not), ``visible`` = visible pixels / all mask pixels
(occlusion and truncation), ``truncated``, ``occluded``, and ``difficult`` (visible < 0.4 or box side < 20 px).
Objects with less than 8% (or 30 px) visible are left unannotated.

Determinism: image ``i`` uses ``numpy.random.default_rng([seed, i])`` only, and images are written with a
fixed JPEG quality by ``cv2.imencode``, so the files are byte-identical for a seed whatever the worker count.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gdet.data.coco import write_coco
from gdet.data.records import DetectionSet, make_record
from gdet.data.voc import write_voc
from gdet.errors import DataError
from gdet.io import atomic_write, save_json

SYNTH_VERSION = 1
JPEG_QUALITY = 90

CLASSES: tuple[tuple[str, str], ...] = (
    ("disc", "target"), ("ring", "solid"), ("triangle", "checker"), ("star", "solid"), ("cross", "dots"),
    ("rectangle", "stripes"), ("crescent", "gradient"), ("heart", "speckle"), ("hexagon", "grid"),
    ("arrow", "gradient"),
)
CLASS_NAMES: list[str] = [c for c, _ in CLASSES]
TEXTURES = ("solid", "stripes", "checker", "dots", "grid", "target", "gradient", "speckle")

_COLOUR_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                   "stereo_motorcycle")
_GRAY_SOURCES = ("brick", "grass", "gravel", "camera", "moon", "page", "text", "cell")

DIFFICULT_VISIBLE = 0.4   # visible fraction below which an object is `difficult`
DIFFICULT_SIZE = 20       # box side (the longer one) below which an object is `difficult`
MAX_SIDE = 8192           # pixels: the largest image (or crop) side generated
DROP_VISIBLE = 0.08       # below this visible fraction (or 30 visible pixels) an object is not annotated


@dataclass(frozen=True)
class SynthConfig:
    """What ``gdet data synth`` generates (also saved as ``synth.json`` beside the data)."""

    images: int = 1000
    seed: int = 0
    width: int = 500
    height: int = 375
    task: str = "detect"            # detect | classify
    val_fraction: float = 0.2
    crop_size: int = 128            # classify: side of the square object crops
    max_objects: int = 10


# ----------------------------------------------------------------------------------------------- shapes
def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _regular(n: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _shape(name: str, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(outer polygons, hole polygons) of a class in unit coordinates (about [-1, 1]^2)."""
    if name == "disc":
        return [_circle()], []
    if name == "ring":
        return [_circle()], [_circle(rng.uniform(0.5, 0.68))]
    if name == "triangle":
        p = _regular(3)
        p[:, 1] += 0.25  # centre the bounding box
        return [p / np.array([0.866, 0.75])], []
    if name == "star":
        outer, inner = _regular(5), _regular(5, rng.uniform(0.38, 0.5), -np.pi / 2 + np.pi / 5)
        p = np.empty((10, 2))
        p[0::2], p[1::2] = outer, inner
        return [p], []
    if name == "cross":
        a = rng.uniform(0.3, 0.42)
        p = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a],
                      [-1, -a], [-a, -a]])
        return [p], []
    if name == "rectangle":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)], []
    if name == "crescent":
        d = rng.uniform(0.4, 0.6)
        return [_circle()], [_circle(rng.uniform(0.8, 0.95), d, 0.0)]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        p = np.stack([x, y], 1)
        p -= (p.max(0) + p.min(0)) / 2
        return [p / np.abs(p).max(0)], []
    if name == "hexagon":
        return [_regular(6, phase=0.0)], []
    if name == "arrow":
        w, h = rng.uniform(0.18, 0.3), rng.uniform(0.55, 0.8)
        neck = rng.uniform(0.0, 0.35)
        return [np.array([[-1, -w], [neck, -w], [neck, -h], [1, 0], [neck, h], [neck, w], [-1, w]])], []
    if name == "blob":  # clutter: a smooth random star-convex blob
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = np.ones_like(t)
        for k in range(2, 6):  # lumpy on purpose: a blob must not pass for a disc, hexagon or heart
            amp = rng.uniform(0.22, 0.35) if k == int(rng.integers(2, 4)) else rng.uniform(0.0, 0.2)
            r += amp * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        r = np.maximum(r, 0.25)
        p = np.stack([r * np.cos(t), r * np.sin(t)], 1)
        return [p / np.abs(p).max()], []
    raise ValueError(name)


# --------------------------------------------------------------------------------------------- textures
def _texture(kind: str, lx: np.ndarray, ly: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Mix weight in [0, 1] between the object's two colours; ``lx, ly`` are object-aligned pixel offsets."""
    period = max(5.0, s / rng.uniform(3.0, 6.0))
    w = 2 * np.pi / period
    if kind == "solid":
        return np.clip(0.12 * (lx + ly) / max(s, 1.0) + 0.1, 0, 1)
    if kind == "stripes":
        return np.clip(0.5 + 2.0 * np.sin(w * lx), 0, 1)
    if kind == "checker":
        return np.clip(0.5 + 2.0 * np.sin(w * lx) * np.sin(w * ly), 0, 1)
    if kind == "dots":
        fx, fy = (lx / period) % 1.0 - 0.5, (ly / period) % 1.0 - 0.5
        d = np.sqrt(fx * fx + fy * fy) * period
        return np.clip(period * 0.3 - d + 0.5, 0, 1)
    if kind == "grid":
        fx, fy = np.abs((lx / period) % 1.0 - 0.5), np.abs((ly / period) % 1.0 - 0.5)
        d = (0.5 - np.maximum(fx, fy)) * period  # distance to the nearest grid line, pixels
        return np.clip(1.8 - d, 0, 1)
    if kind == "target":
        return np.clip(0.5 + 2.0 * np.sin(w * np.sqrt(lx * lx + ly * ly)), 0, 1)
    if kind == "gradient":
        return np.clip(0.5 + lx / max(s, 1.0), 0, 1)
    if kind == "speckle":
        h, wd = lx.shape
        cell = max(2, int(period / 2))
        small = rng.random((h // cell + 2, wd // cell + 2)).astype(np.float32)
        big = cv2.resize(small, (wd // cell * cell + 2 * cell, h // cell * cell + 2 * cell),
                         interpolation=cv2.INTER_CUBIC)[:h, :wd]
        return np.clip((big - 0.5) * 3.0 + 0.5, 0, 1)
    raise ValueError(kind)


def _colours(rng: np.random.Generator, bg_lum: float) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours (float, 0-255) of random hue; the first stands out from the background luminance."""
    cols = []
    for _ in range(2):
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(60, 255), rng.uniform(40, 255)]]], np.float32)
        cols.append(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32))
    a, b = cols
    lum = lambda c: float(c @ np.array([0.299, 0.587, 0.114]))  # noqa: E731
    if abs(lum(a) - bg_lum) < 45:  # too close to the background: push it away
        a = np.clip(a + (70 if bg_lum < 128 else -70), 0, 255)
    if abs(lum(a) - lum(b)) < 50:  # the texture must be visible
        b = np.clip(255 - a + rng.uniform(-30, 30, 3), 0, 255).astype(np.float32)
    return a, b


# ---------------------------------------------------------------------------------------- backgrounds
@functools.lru_cache(maxsize=1)
def _sources() -> tuple[tuple[np.ndarray, bool], ...]:
    """(image, is_gray) for each scikit-image sample picture (local files shipped with scikit-image)."""
    import skimage.data

    out = []
    for name in _COLOUR_SOURCES + _GRAY_SOURCES:
        im = getattr(skimage.data, name)()
        if isinstance(im, tuple):
            im = im[0]
        im = np.ascontiguousarray(im[..., :3] if im.ndim == 3 else im).astype(np.uint8)
        out.append((im, im.ndim == 2))
    return tuple(out)


def _crop_source(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    src, gray = _sources()[rng.integers(len(_sources()))]
    sh, sw = src.shape[:2]
    zoom = max(rng.uniform(0.6, 1.8), w / sw, h / sh)  # output pixels per source pixel
    cw, ch = min(sw, int(np.ceil(w / zoom))), min(sh, int(np.ceil(h / zoom)))
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    crop = src[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    if gray:
        tint = rng.uniform(0.4, 1.0, 3).astype(np.float32)
        img = img[..., None] * tint + rng.uniform(0, 60, 3).astype(np.float32)
    else:
        img = img[..., rng.permutation(3)]
    img = (img - 128.0) * np.float32(rng.uniform(0.6, 1.2)) + np.float32(128.0 + rng.uniform(-30, 30))
    return img


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = _crop_source(rng, w, h)
    if rng.random() < 0.3:
        a = np.float32(rng.uniform(0.2, 0.5))
        img = (1 - a) * img + a * _crop_source(rng, w, h)
    return np.ascontiguousarray(np.clip(img, 0, 255), dtype=np.float32)


# ------------------------------------------------------------------------------------------- drawing
def _render(img: np.ndarray, rng: np.random.Generator, shape: str, texture: str, s: float, aspect: float,
            angle: float, cx: float, cy: float):
    """Draw one textured shape onto ``img`` (float HxWx3, in place).

    Returns:
        (x0, y0, alpha): the patch origin (may be negative) and the float alpha mask of the whole shape,
        including the parts outside the image.
    """
    H, W = img.shape[:2]
    outer, holes = _shape(shape, rng)
    sx, sy = s / 2 * np.sqrt(aspect), s / 2 / np.sqrt(aspect)
    c, sn = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -sn], [sn, c]])

    def place(p):
        return (p * [sx, sy]) @ rot.T + [cx, cy]

    pts = np.concatenate([place(p) for p in outer])
    x0, y0 = int(np.floor(pts[:, 0].min())) - 2, int(np.floor(pts[:, 1].min())) - 2
    x1, y1 = int(np.ceil(pts[:, 0].max())) + 3, int(np.ceil(pts[:, 1].max())) + 3
    pw, ph = x1 - x0, y1 - y0

    def fill(polys):
        m = np.zeros((ph, pw), np.uint8)
        for p in polys:
            q = np.round((place(p) - [x0, y0]) * 16).astype(np.int32)  # 4 fractional bits
            cv2.fillPoly(m, [q], 255, lineType=cv2.LINE_AA, shift=4)
        return m.astype(np.float32) / 255.0

    alpha = fill(outer)
    if holes:
        alpha *= 1.0 - fill(holes)

    # Visible part of the patch.
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if ix1 <= ix0 or iy1 <= iy0:
        return x0, y0, alpha
    a = alpha[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
    yy, xx = np.mgrid[iy0:iy1, ix0:ix1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    lx, ly = dx * c + dy * sn, -dx * sn + dy * c  # object-aligned offsets
    region = img[iy0:iy1, ix0:ix1]
    bg_lum = float((region.mean(axis=(0, 1)) @ np.array([0.299, 0.587, 0.114])))
    col_a, col_b = _colours(rng, bg_lum)
    t = _texture(texture, lx, ly, s, rng)[..., None]
    tex = col_a * (1 - t) + col_b * t
    shade = 1.0 + rng.uniform(-0.15, 0.15) * (lx / max(s, 1.0))[..., None]  # a little light gradient
    a3 = a[..., None]
    region[...] = region * (1 - a3) + np.clip(tex * shade, 0, 255) * a3
    return x0, y0, alpha


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    H, W = img.shape[:2]
    for _ in range(int(rng.integers(0, 4))):  # lines and scribbles
        n = int(rng.integers(2, 5))
        pts = np.stack([rng.uniform(0, W, n), rng.uniform(0, H, n)], 1)
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, col, int(rng.integers(1, 5)),
                      lineType=cv2.LINE_AA, shift=4)
    for _ in range(int(rng.integers(0, 4))):  # blobs wearing class textures
        s = float(np.exp(rng.uniform(np.log(16), np.log(0.4 * min(W, H)))))
        _render(img, rng, "blob", TEXTURES[rng.integers(len(TEXTURES))], s, rng.uniform(0.6, 1.6),
                rng.uniform(0, 2 * np.pi), rng.uniform(0, W), rng.uniform(0, H))


def generate_image(cfg: SynthConfig, index: int) -> tuple[np.ndarray, list[dict]]:
    """Image ``index`` of the dataset: (RGB uint8 ``[H, W, 3]``, objects).

    Each object is ``{"box": [x1, y1, x2, y2], "label", "difficult", "truncated", "occluded", "visible"}``.
    """
    rng = np.random.default_rng([cfg.seed, index])
    W, H = cfg.width, cfg.height
    img = _background(rng, W, H)
    _clutter(img, rng)

    n = int(rng.integers(1, cfg.max_objects + 1))
    smax = max(17.0, 0.75 * min(W, H))
    specs = []
    for _ in range(n):
        label = int(rng.integers(len(CLASSES)))
        s = float(np.exp(rng.uniform(np.log(16.0), np.log(smax))))
        specs.append((s, label, rng.uniform(0.6, 1.6), rng.uniform(0, 2 * np.pi),
                      rng.uniform(-0.15 * s, W + 0.15 * s), rng.uniform(-0.15 * s, H + 0.15 * s)))
    # Mostly large-to-small (small objects stay visible), with some shuffling so big ones occlude too.
    specs.sort(key=lambda sp: -sp[0] * rng.uniform(0.6, 1.4))

    owner = np.full((H, W), -1, np.int16)
    drawn = []
    for k, (s, label, aspect, angle, cx, cy) in enumerate(specs):
        x0, y0, alpha = _render(img, rng, CLASSES[label][0], CLASSES[label][1], s, aspect, angle, cx, cy)
        solid = alpha >= 0.5
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + alpha.shape[1], W), min(y0 + alpha.shape[0], H)
        inside = solid[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] if ix1 > ix0 and iy1 > iy0 else solid[:0, :0]
        if inside.size:
            owner[iy0:iy1, ix0:ix1][inside] = k
        drawn.append((label, int(solid.sum()), int(inside.sum()), (ix0, iy0), inside))

    objects = []
    for k, (label, total, n_inside, (ix0, iy0), inside) in enumerate(drawn):
        if n_inside == 0 or total == 0:
            continue
        visible_px = int((owner[iy0:iy0 + inside.shape[0], ix0:ix0 + inside.shape[1]] == k).sum())
        visible = visible_px / total
        if visible < DROP_VISIBLE or visible_px < 30:
            continue
        ys, xs = np.nonzero(inside)
        box = [float(ix0 + xs.min()), float(iy0 + ys.min()), float(ix0 + xs.max() + 1), float(iy0 + ys.max() + 1)]
        truncated = n_inside / total < 0.85
        occluded = visible_px / n_inside < 0.85
        tiny = max(box[2] - box[0], box[3] - box[1]) < DIFFICULT_SIZE
        objects.append({"box": box, "label": label, "difficult": bool(visible < DIFFICULT_VISIBLE or tiny),
                        "truncated": bool(truncated), "occluded": bool(occluded), "visible": round(visible, 4)})

    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    sigma = rng.uniform(0.0, 8.0)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def object_crop(img: np.ndarray, box: list[float], size: int, rng: np.random.Generator) -> np.ndarray:
    """A square crop centred on ``box`` with 15-40% context (jittered), resized to ``size``; outside the image
    it is filled with the image's mean colour (a mirrored border would duplicate truncated objects)."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * rng.uniform(1.15, 1.4)
    cx = (x1 + x2) / 2 + rng.uniform(-0.05, 0.05) * side
    cy = (y1 + y2) / 2 + rng.uniform(-0.05, 0.05) * side
    fill = tuple(float(v) for v in img.reshape(-1, 3).mean(0))  # mean-colour padding, as R-CNN's crops
    n = max(size, int(np.ceil(side)))  # cut at >= output resolution, then shrink with area averaging
    k = n / side
    m = np.array([[k, 0, n / 2 - k * cx], [0, k, n / 2 - k * cy]], np.float32)
    crop = cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    return crop if n == size else cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def encode_jpeg(img_rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def image_name(index: int) -> str:
    return f"{index + 1:06d}"


def val_indices(cfg: SynthConfig) -> set[int]:
    """Images in the validation split: a seeded random subset of round(val_fraction * images)."""
    n_val = int(round(cfg.val_fraction * cfg.images))
    perm = np.random.default_rng([cfg.seed, 2**32 - 1]).permutation(cfg.images)
    return set(int(i) for i in perm[:n_val])


def _work(args) -> dict:
    cfg, out, index, split = args
    img, objects = generate_image(cfg, index)
    name = image_name(index)
    if cfg.task == "detect":
        _write_bytes(out / "JPEGImages" / f"{name}.jpg", encode_jpeg(img))
    else:
        rng = np.random.default_rng([cfg.seed, index, 1])
        for j, o in enumerate(objects):
            if o["difficult"]:
                continue
            crop = object_crop(img, o["box"], cfg.crop_size, rng)
            _write_bytes(out / split / CLASS_NAMES[o["label"]] / f"{name}_{j}.jpg", encode_jpeg(crop))
    return {"index": index, "name": name, "split": split, "objects": objects}


def _init_worker() -> None:
    cv2.setNumThreads(1)
    _sources()


def generate(cfg: SynthConfig, out: str | os.PathLike, formats: tuple[str, ...] = ("voc",), workers: int | None = None,
             show_progress: bool = True) -> dict:
    """Generate the dataset under ``out``.

    Layout (``task="detect"``): ``JPEGImages/<000001>.jpg``; VOC: ``Annotations/``, ``ImageSets/Main/{train,val}.txt``;
    COCO: ``train.json``, ``val.json`` (``file_name`` relative to ``out``); always ``classes.txt`` and
    ``synth.json`` (the config and counts). ``task="classify"``: ``train/<class>/*.jpg``, ``val/<class>/*.jpg``
    (object-centred crops of the non-difficult objects) and ``{train,val}/classes.txt`` (the detection label
    order, which :func:`~gdet.data.read_image_folder` follows).

    Args:
        cfg: what to generate.
        out: output folder.
        formats: any of ``"voc"``, ``"coco"`` (detect only).
        workers: processes (default: all CPUs; 0 or 1 = in this process). Output does not depend on it.
        show_progress: show a progress bar.

    Returns:
        the summary saved in ``synth.json``.
    """
    from gdet.engine import progress

    if cfg.images < 1:
        raise DataError(f"--images must be at least 1, got {cfg.images}")
    if cfg.width < 32 or cfg.height < 32:
        raise DataError(f"image size {cfg.width}x{cfg.height} is too small (at least 32x32)")
    if cfg.width > MAX_SIDE or cfg.height > MAX_SIDE:
        raise DataError(f"--size: each side must be at most {MAX_SIDE}, got {cfg.width}x{cfg.height}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise DataError(f"--seed: must be a non-negative integer, got {cfg.seed!r}")
    if isinstance(cfg.crop_size, bool) or not isinstance(cfg.crop_size, int) or not 1 <= cfg.crop_size <= MAX_SIDE:
        raise DataError(f"--crop-size: must be an integer in [1, {MAX_SIDE}], got {cfg.crop_size!r}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.task not in ("detect", "classify"):
        raise DataError(f"unknown task {cfg.task!r} (detect or classify)")
    bad = set(formats) - {"voc", "coco"}
    if bad:
        raise DataError(f"unknown format(s) {sorted(bad)} (voc, coco)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    val = val_indices(cfg)
    if cfg.task == "classify":  # every class folder exists, so read_image_folder always sees all classes
        for split in ("train", "val"):
            for name in CLASS_NAMES:
                (out / split / name).mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, out, i, "val" if i in val else "train") for i in range(cfg.images)]
    workers = (os.cpu_count() or 1) if workers is None else workers
    workers = min(workers, cfg.images)
    bar = dict(total=len(jobs), desc="synth", unit="img", disable=not show_progress)
    if workers <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            results = [r for r in progress(map(_work, jobs), **bar)]
        finally:
            cv2.setNumThreads(threads)
    else:
        # spawn, not fork: a process forked after OpenCV or torch has started its thread pool can deadlock
        # (seen here: children hung in cv2.setNumThreads when the parent had already drawn images).
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            results = list(progress(pool.imap(_work, jobs, chunksize=4), **bar))

    summary = {"version": SYNTH_VERSION, "config": cfg.__dict__, "classes": CLASS_NAMES,
               "textures": dict(CLASSES), "splits": {}}
    for split in ("train", "val"):
        rs = [r for r in results if r["split"] == split]
        objs = [o for r in rs for o in r["objects"]]
        summary["splits"][split] = {
            "images": len(rs), "objects": len(objs), "difficult": sum(o["difficult"] for o in objs),
            "per_class": [sum(o["label"] == k for o in objs) for k in range(len(CLASSES))]}
        if cfg.task == "detect" and rs:
            _write_annotations(out, split, rs, cfg, formats)
    for folder in [out] + ([out / "train", out / "val"] if cfg.task == "classify" else []):
        with atomic_write(folder / "classes.txt", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in CLASS_NAMES))
    save_json(summary, out / "synth.json")
    return summary


def _write_annotations(out: Path, split: str, results: list[dict], cfg: SynthConfig, formats) -> None:
    records = []
    for r in results:
        objs = [dict(o, ignore=o["difficult"]) for o in r["objects"]]
        records.append(make_record(r["index"] + 1, str(out / "JPEGImages" / f"{r['name']}.jpg"),
                                   cfg.width, cfg.height, objs))
    dset = DetectionSet(records, CLASS_NAMES, format="synth", root=str(out), split=split)
    if "voc" in formats:
        write_voc(dset, out, split, copy_images=False)
    if "coco" in formats:
        write_coco(dset, out / f"{split}.json")
