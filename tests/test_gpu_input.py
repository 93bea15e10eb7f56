"""gdet.classification.gpu_input: batched decoding + augmentation draw what the per-image TrainTransform draws, match
torchvision pixel for pixel on fixed parameters, and are deterministic for a seed; the loader benchmark runs."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import gdet.classification.transforms as T
from gdet.classification.gpu_input import (AugmentParams, BatchTrainAugment, EncodedImageDataset, build_device_loader,
                                 collate_encoded, decode_batch, declared_size, epoch_generator,
                                 jpeg_exif_orientation, resample_matrices)
from gdet.data.image import read_image
from gdet.errors import ConfigError, DataError

N_DRAWS = 3000
KS_MAX = 0.05  # two-sample KS at n = m = 3000: p ~ 0.001 at 0.05; a wrong distribution scores far higher


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def crop_stats(boxes, height, width):
    boxes = np.asarray(boxes, float)  # (top, left, h, w)
    return {"area": boxes[:, 2] * boxes[:, 3] / (height * width), "aspect": boxes[:, 3] / boxes[:, 2],
            "cx": (boxes[:, 1] + boxes[:, 3] / 2) / width, "cy": (boxes[:, 0] + boxes[:, 2] / 2) / height}


def no_colour(size, **kw):
    return BatchTrainAugment(size, brightness=0, contrast=0, saturation=0, lighting=0, **kw)


def params(n, boxes, modes=0, flips=False, factors=None, order=None, lighting=None):
    return AugmentParams(torch.tensor(boxes, dtype=torch.int64).reshape(n, 4), torch.full((n,), modes),
                         torch.full((n,), bool(flips)), factors if factors is not None else torch.ones(n, 3),
                         order if order is not None else torch.arange(3).repeat(n, 1),
                         lighting if lighting is not None else torch.zeros(n, 3))


# ----------------------------------------------------------------------------------------- distributions

@pytest.mark.parametrize("height,width", [(60, 100), (90, 40)])
def test_crop_distribution_matches_train_transform(height, width):
    torch.manual_seed(0)
    ref = T.TrainTransform(32)
    cpu = crop_stats([ref.crop_params(height, width) for _ in range(N_DRAWS)], height, width)
    boxes = BatchTrainAugment(32).sample([(height, width)] * N_DRAWS, epoch_generator(0, 0)).boxes
    assert (boxes[:, 2:] > 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
    assert (boxes[:, 1] + boxes[:, 3] <= width).all() and (boxes[:, :2] >= 0).all()
    bat = crop_stats(boxes.numpy(), height, width)
    for key in ("area", "aspect", "cx", "cy"):
        assert ks(cpu[key], bat[key]) < KS_MAX, key
    # the statistic has power: a narrower area range is told apart
    wrong = crop_stats(BatchTrainAugment(32, scale=(0.2, 1.0)).sample([(height, width)] * N_DRAWS,
                                                                      epoch_generator(1, 0)).boxes.numpy(),
                       height, width)
    assert ks(cpu["area"], wrong["area"]) > 2 * KS_MAX
    assert abs(np.quantile(cpu["area"], 0.5) - np.quantile(bat["area"], 0.5)) < 0.03


def test_fallback_crop_equals_train_transform():
    # 10 x 200 at >= 99% area never fits the aspect range: the centred fallback crop, identical on both paths
    ref = T.TrainTransform(16, scale=(0.99, 1.0))
    bat = BatchTrainAugment(16, scale=(0.99, 1.0)).sample([(10, 200), (200, 10)], epoch_generator(0, 0)).boxes
    assert bat.tolist() == [list(ref.crop_params(10, 200)), list(ref.crop_params(200, 10))]
    assert bat.tolist()[0] == [0, 93, 10, 13]


def test_interpolation_flip_and_jitter_frequencies(monkeypatch):
    modes, flips = [], []
    real_resize, real_flip = T.resize, TF.horizontal_flip

    def rec_resize(img, size, mode="bilinear"):
        modes.append(mode)
        return real_resize(img, size, mode)

    def rec_flip(x):
        flips.append(True)
        return real_flip(x)

    monkeypatch.setattr(T, "resize", rec_resize)
    monkeypatch.setattr(TF, "horizontal_flip", rec_flip)
    torch.manual_seed(0)
    ref = T.TrainTransform(4, brightness=0, contrast=0, saturation=0, lighting=0)
    n = 2000
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    for _ in range(n):
        ref(img)
    p = BatchTrainAugment(4).sample([(8, 8)] * n, epoch_generator(3, 0))
    for k, m in enumerate(T.INTERPOLATIONS):
        f_cpu, f_bat = modes.count(m) / n, float((p.modes == k).float().mean())
        assert abs(f_cpu - 0.25) < 0.04 and abs(f_bat - 0.25) < 0.04 and abs(f_cpu - f_bat) < 0.05, m
    assert abs(len(flips) / n - 0.5) < 0.04 and abs(float(p.flips.float().mean()) - 0.5) < 0.04
    # ColorJitter: factors uniform on [0.6, 1.4], the order a uniform permutation (torchvision draws randperm(4))
    jit = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
    draws = [jit.make_params([]) for _ in range(n)]
    ref_b = [d["brightness_factor"] for d in draws]
    assert ks(ref_b, p.factors[:, 0].numpy()) < 0.06 and ks(ref_b, p.factors[:, 2].numpy()) < 0.06
    assert 0.6 <= float(p.factors.min()) and float(p.factors.max()) <= 1.4
    ref_orders = [tuple(int(i) for i in d["fn_idx"] if i != 3) for d in draws]
    bat_orders = [tuple(o) for o in p.order.tolist()]
    for perm in {(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)}:
        assert abs(ref_orders.count(perm) / n - 1 / 6) < 0.035 and abs(bat_orders.count(perm) / n - 1 / 6) < 0.035


def test_lighting_covariance():
    # AlexNet PCA noise: offset = V (alpha * lambda), alpha ~ N(0, std^2) => cov = V diag(std^2 lambda^2) V^T
    std = 0.1
    p = BatchTrainAugment(8, lighting=std).sample([(8, 8)] * 20000, epoch_generator(0, 0))
    v, lam = T.PCA_EIGVEC.double(), T.PCA_EIGVAL.double()
    expected = v @ torch.diag((std * lam) ** 2) @ v.T
    cov = torch.cov(p.lighting.double().T)
    assert torch.allclose(cov, expected, atol=0.03 * float(expected.abs().max()))
    assert p.lighting.mean(0).abs().max() < 3 * std * float(lam[0]) / math.sqrt(20000) + 1e-4


# --------------------------------------------------------------------------------------------- pixel level

@pytest.mark.parametrize("method", ["loop", "matrix"])
@pytest.mark.parametrize("mode,size", [("bilinear", 24), ("bilinear", 48), ("bicubic", 16), ("bicubic", 40),
                                       ("nearest", 24)])
def test_fixed_crop_matches_torchvision_resized_crop(mode, size, method):
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=g)
    aug = no_colour(size, interpolations=[mode])
    box = (5, 7, 20, 30)
    out = aug.apply([img], params(1, [box]), dtype=torch.float32, method=method)[0]
    interp = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC,
              "nearest": v2.InterpolationMode.NEAREST}[mode]
    ref = TF.resized_crop(img.float(), *box, [size, size], interpolation=interp, antialias=True) / 255.0
    torch.testing.assert_close(out, ref.clamp(0, 1), atol=1e-5, rtol=0)
    flipped = aug.apply([img], params(1, [box], flips=True), dtype=torch.float32, method=method)[0]
    torch.testing.assert_close(flipped, ref.clamp(0, 1).flip(-1), atol=1e-5, rtol=0)
    q = aug.apply([img], params(1, [box]), method=method)[0]  # uint8 output: TrainTransform's rounding
    assert q.dtype == torch.uint8 and (q.int() - (ref.clamp(0, 1) * 255).round().int()).abs().max() <= 1


@pytest.mark.parametrize("method", ["loop", "matrix"])
def test_area_mode_is_box_average(method):
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=g)
    aug = no_colour(10, interpolations=["area"])
    out = aug.apply([img], params(1, [(0, 0, 40, 40)]), torch.float32, method=method)[0]
    ref = img.float().reshape(3, 10, 4, 10, 4).mean(dim=(2, 4)) / 255.0  # each output pixel: a 4x4 block mean
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_matrix_resize_equals_per_image_interpolate():
    # mixed sizes (one far above the median: looped), every mode, shrinking and enlarging, flips
    g = torch.Generator().manual_seed(4)
    sizes = [(int(torch.randint(12, 60, (1,), generator=g)), int(torch.randint(12, 60, (1,), generator=g)))
             for _ in range(23)] + [(150, 40)]
    imgs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    for size in (9, 32):
        aug = no_colour(size)
        p = aug.sample(sizes, epoch_generator(size, 0))
        assert set(p.modes.tolist()) == {0, 1, 2, 3}
        loop = aug.apply(imgs, p, torch.float32, method="loop")
        torch.testing.assert_close(aug.apply(imgs, p, torch.float32, method="matrix"), loop, atol=1e-5, rtol=0)
        q = aug.apply(imgs, p, method="matrix").int() - aug.apply(imgs, p, method="loop").int()
        assert q.abs().max() <= 1 and (q != 0).float().mean() < 0.01  # only rounding ties differ
    w = resample_matrices(torch.tensor([0, 3]), torch.tensor([10, 5]), 12, 4, torch.tensor([0, 3]))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))
    assert w[1, :, :3].abs().max() == 0 and w[1, :, 8:].abs().max() == 0  # nothing outside the crop
    with pytest.raises(ConfigError, match="resize method"):
        no_colour(8).apply(imgs[:1], params(1, [(0, 0, 4, 4)]), method="roi")


def test_batched_colour_matches_torchvision_per_image():
    g = torch.Generator().manual_seed(2)
    n = 6
    imgs = [torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=g) for _ in range(n)]
    factors = 0.6 + 0.8 * torch.rand(n, 3, generator=g)
    order = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
    light = 0.05 * torch.randn(n, 3, generator=g)
    aug = BatchTrainAugment(12, lighting=0.1)
    out = aug.apply(imgs, params(n, [(0, 0, 12, 12)] * n, factors=factors, order=order, lighting=light),
                    dtype=torch.float32)
    fns = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for i in range(n):
        x = imgs[i].float() / 255.0
        for op in order[i].tolist():
            x = fns[op](x, float(factors[i, op]))
        x = (x + light[i].view(3, 1, 1)).clamp(0, 1)
        torch.testing.assert_close(out[i], x, atol=1e-5, rtol=0)


def test_augment_checks_its_arguments():
    with pytest.raises(ConfigError, match="interpolation 'lanczos'"):
        BatchTrainAugment(8, interpolations=["lanczos"])
    with pytest.raises(ConfigError, match="aug_contrast"):
        BatchTrainAugment(8, contrast=-0.1)
    with pytest.raises(ConfigError, match="resize method 'roi'"):
        BatchTrainAugment(8, resize_method="roi")
    assert BatchTrainAugment(8)([], epoch_generator(0, 0)).shape == (0, 3, 8, 8)


# ------------------------------------------------------------------------------------ decoding and loader

def _folder(root: Path, n: int = 8) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i}.jpg"
        Image.fromarray((rng.random((36 + 2 * i, 44, 3)) * 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
        labels.append(i % 2)
    return paths, labels


def test_decode_matches_pillow_for_jpeg_png_bmp_and_exif(tmp_path):
    rng = np.random.default_rng(1)
    files = []
    for ext in ("jpg", "png", "bmp"):
        p = tmp_path / f"a.{ext}"
        Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(p)
        files.append(p)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    p = tmp_path / "rot.jpg"
    Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(p, exif=exif)
    files.append(p)
    batch = collate_encoded([EncodedImageDataset([str(f) for f in files], [0] * 4)[i] for i in range(4)])
    assert batch.orientations == [1, 1, 1, 6] and jpeg_exif_orientation(b"not a jpeg") == 1
    assert [bytes(b.numpy()) for b in batch.files()] == [f.read_bytes() for f in files]
    stats = {}
    out = decode_batch(batch.files(), "cpu", batch.paths, batch.orientations, stats)
    assert stats == {"cpu": 4}
    for f, img in zip(files, out):
        ref = torch.from_numpy(read_image(f).copy()).permute(2, 0, 1)
        assert img.shape == ref.shape and img.dtype == torch.uint8
        assert (img.int() - ref.int()).abs().max() <= 1, f.name
    assert out[3].shape == (3, 30, 20)


def test_bad_files_give_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = EncodedImageDataset([str(bad), str(tmp_path / "missing.jpg")], [0, 0])
    item = ds[0]
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        decode_batch([item[0]], "cpu", [item[2]])
    with pytest.raises(DataError, match=r"missing\.jpg: image not found"):
        ds[1]
    # headers are read without decoding; a declared size over Pillow's bomb limit is refused by the worker
    ok = tmp_path / "ok.jpg"
    Image.new("RGB", (31, 17)).save(ok)
    Image.new("RGB", (31, 17)).save(tmp_path / "ok.png")
    assert declared_size(ok.read_bytes()) == (17, 31) == declared_size((tmp_path / "ok.png").read_bytes())
    raw = bytearray(ok.read_bytes())
    sof = next(i for i in range(len(raw) - 1) if raw[i] == 0xFF and raw[i + 1] in (0xC0, 0xC2))
    raw[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    (tmp_path / "bomb.jpg").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"bomb\.jpg: cannot decode image: 60000x60000 pixels"):
        EncodedImageDataset([str(tmp_path / "bomb.jpg")], [0])[0]


def _batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_is_deterministic_for_a_seed(tmp_path):
    paths, labels = _folder(tmp_path)
    aug = BatchTrainAugment(16)
    def mk(seed, prefetch=0):
        return build_device_loader(paths, labels, aug, batch_size=4, device="cpu", num_workers=0, seed=seed,
                                   prefetch=prefetch)
    a, b = _batches(mk(0)), _batches(mk(0, prefetch=2))  # the prefetch thread changes nothing
    assert len(a) == 2 and a[0][0].shape == (4, 3, 16, 16) and a[0][0].dtype == torch.uint8
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = _batches(mk(1))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    e1 = _batches(mk(0), epoch=1)
    assert not all(torch.equal(xa, xe) for (xa, _), (xe, _) in zip(a, e1))
    # the same sampler order as gdet.engine.build_loader over the same files
    from gdet.data.loading import ClassificationDataset
    from gdet.engine import build_loader

    ref = build_loader(ClassificationDataset(paths, labels, lambda im: torch.zeros(1)), batch_size=4, train=True,
                       num_workers=0, seed=0)
    ref_labels = torch.cat([y for _, y in ref])
    assert torch.equal(torch.cat([y for _, y in a]), ref_labels)


def test_loader_stops_its_thread_when_left_early(tmp_path):
    import threading

    paths, labels = _folder(tmp_path, 8)
    loader = build_device_loader(paths, labels, BatchTrainAugment(16), batch_size=2, device="cpu", num_workers=0)
    for step, _ in enumerate(loader, 1):
        if step == 1:
            break
    assert not any(t.name == "gdet-device-batches" and t.is_alive() for t in threading.enumerate())


def test_loader_with_channels_last_and_float(tmp_path):
    paths, labels = _folder(tmp_path, 4)
    loader = build_device_loader(paths, labels, BatchTrainAugment(16), batch_size=2, device="cpu", num_workers=1,
                                 channels_last=True, dtype=torch.float32, prefetch=1)
    assert len(loader) == 2
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and y.dtype == torch.int64


def test_loader_error_reaches_the_caller(tmp_path):
    paths, labels = _folder(tmp_path, 4)
    Path(paths[1]).write_bytes(b"\xff\xd8 broken")
    loader = build_device_loader(paths, labels, BatchTrainAugment(16), batch_size=4, device="cpu", num_workers=0)
    with pytest.raises(DataError, match="cannot decode image"):
        list(loader)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
def test_cuda_decode_and_augment_match_cpu(tmp_path):
    # Smooth pictures. nvJPEG's chroma upsampling is coarser than libjpeg's: on these its mean error against the
    # encoded picture is 2.7-7.4 levels against libjpeg's 1.2-3.2 (2.2-2.5x; H200, torchvision 0.26), and on pixel
    # noise the two differ by ~13. A wrong decode (channels, orientation, offsets) is off by tens of levels.
    yy, xx = np.mgrid[0:1:48j, 0:1:64j]
    paths, originals = [], []
    for i in range(6):
        rgb = np.stack([128 + 100 * np.sin(2 * math.pi * (xx * (i + 1) / 2 + yy)),
                        128 + 100 * np.cos(2 * math.pi * yy * (1 + i / 3)), 255 * xx], -1).round().astype(np.uint8)
        paths.append(str(tmp_path / f"{i}.jpg"))
        originals.append(torch.from_numpy(rgb).permute(2, 0, 1).float())
        Image.fromarray(rgb).save(paths[-1], quality=90)
    png = tmp_path / "x.png"
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(png)
    ds = EncodedImageDataset(paths + [str(png)], [0] * 7)
    batch = collate_encoded([ds[i] for i in range(7)])
    stats = {}
    gpu = decode_batch(batch.files(), "cuda", batch.paths, batch.orientations, stats)
    cpu = decode_batch(batch.files(), "cpu", batch.paths, batch.orientations)
    assert stats == {"gpu": 6, "cpu": 1}  # the PNG falls back to the CPU decoder
    for a, b, ref in zip(gpu, cpu, originals):
        assert a.is_cuda and a.shape == b.shape
        err_gpu, err_cpu = (a.cpu().float() - ref).abs().mean(), (b.float() - ref).abs().mean()
        assert err_gpu < 3 * err_cpu + 1 and (a.cpu().float() - b.float()).abs().mean() < 8
    aug = BatchTrainAugment(24)
    xg = aug([c.cuda() for c in cpu], epoch_generator(0, 0))
    xc = aug(cpu, epoch_generator(0, 0))
    diff = (xg.cpu().float() - xc.float()).abs()
    assert xg.is_cuda and diff.max() <= 3 and diff.mean() < 0.1


# ------------------------------------------------------------------------------------------------ benchmark

def test_bench_loader_tiny(tmp_path):
    from gdet.benchmarks.loader import main

    _folder(tmp_path / "data", 8)
    r = CliRunner().invoke(main, ["--data", str(tmp_path / "data"), "--device", "cpu", "--size", "32",
                                  "--batch", "4", "--workers", "0", "--steps", "1", "--warmup", "0",
                                  "--backbone", "googlenet_tv", "--resize", "matrix"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(s.startswith("cpu (per-image workers)") for s in lines)
    assert any(s.startswith("gpu (batched on device)") for s in lines)
    assert lines[-1].startswith("ratio batched / per-image: loader") and lines[-1].endswith("x")
    assert "resize matrix" in lines[0]
    bad = CliRunner().invoke(main, ["--data", str(tmp_path / "data"), "--device", "cpu", "--paths", "tpu"])
    assert bad.exit_code != 0 and "--paths" in bad.output
