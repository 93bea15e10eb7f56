"""R-CNN region crops (roi_align) against a plain pad-crop-resize reference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gdet.detection.crops import context_boxes, crop_regions, iter_region_chunks

S, P = 32, 4  # crop side and context pad: boxes grow by S / (S - 2P) = 4/3
MARGIN = 200


def reference_crop(image, box, size):
    """Pad the (normalised) image with zeros = the mean, cut the integer box out, resize bilinearly."""
    padded = F.pad(image, (MARGIN, MARGIN, MARGIN, MARGIN))
    x1, y1, x2, y2 = [int(round(v)) + MARGIN for v in box.tolist()]
    crop = padded[:, y1:y2, x1:x2][None]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]


def sample_coords(lo, hi, size):
    """Continuous image coordinates of the sample points of a bilinear resize of [lo, hi] to ``size`` pixels."""
    return lo + (np.arange(size) + 0.5) * (hi - lo) / size


def image():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 60, 80, generator=g)  # a normalised image: values around the mean 0


def test_context_boxes_scale():
    b = torch.tensor([[10.0, 20.0, 34.0, 32.0]])
    d = context_boxes(b, S, P)
    # width 24 -> 32, height 12 -> 16, same centre
    assert d.tolist() == [[6.0, 18.0, 38.0, 34.0]]
    assert context_boxes(b, S, 0).tolist() == b.tolist()
    with pytest.raises(ValueError):
        context_boxes(b, 32, 16)


@pytest.mark.parametrize("box", [
    [16.0, 10.0, 64.0, 46.0],   # inside, dilated to [8, 4, 72, 52]: 64 x 48 -> 32 x 32 (downsampling)
    [-8.0, 25.0, 40.0, 73.0],   # crosses the left and bottom borders
    [47.0, -14.0, 95.0, 28.0],  # crosses the top and right borders
])
def test_crop_matches_pad_crop_resize_when_shrinking(box):
    img = image()
    b = torch.tensor([box])
    got = crop_regions(img, b, S, P)[0]
    d = context_boxes(b, S, P)[0]
    assert torch.equal(d, d.round())  # the reference needs integer crop borders
    ref = reference_crop(img, d, S)
    h, w = img.shape[1:]
    # Pixels whose sample lies within one source pixel of the image border are blended with the padding by
    # the reference (it interpolates between the last image pixel and the first zero of the padding), while
    # R-CNN (and crop_regions) resize the in-image part alone and paste it on the mean. Everywhere else both are
    # the same bilinear sample, so they must agree to float rounding.
    xs = sample_coords(float(d[0]), float(d[2]), S)
    ys = sample_coords(float(d[1]), float(d[3]), S)
    band_x = ((xs > -0.5) & (xs < 0.5)) | ((xs > w - 0.5) & (xs < w + 0.5))
    band_y = ((ys > -0.5) & (ys < 0.5)) | ((ys > h - 0.5) & (ys < h + 0.5))
    exact = torch.from_numpy(~band_y[:, None] & ~band_x[None, :])
    assert band_x.sum() <= 2 and band_y.sum() <= 2
    assert torch.allclose(got[:, exact], ref[:, exact], atol=1e-5)
    # In the band, the difference is at most the blend weight of the other side: <= 0.75 of the image range.
    assert (got - ref).abs().max() <= 0.75 * img.abs().max() + 1e-5
    # Outside the image the fill is exactly the mean (0 after normalisation).
    outside = torch.from_numpy(((ys < 0) | (ys > h))[:, None] | ((xs < 0) | (xs > w))[None, :])
    assert torch.all(got[:, outside] == 0)
    if "-" in str(box):
        assert outside.any()


def test_crop_matches_resize_when_enlarging():
    # A 12 x 9 box dilated to 16 x 12, warped up to 32 x 32.
    img = image()
    b = torch.tensor([[22.0, 31.5, 34.0, 40.5]])
    d = context_boxes(b, S, P)[0]
    assert d.tolist() == [20.0, 30.0, 36.0, 42.0]
    got = crop_regions(img, b, S, P)[0]
    ref = reference_crop(img, d, S)
    # The reference replicates the crop's own edge for samples within half a pixel of it; roi_align reads the
    # real neighbouring pixel there (the image continues). Only the outermost ring of samples is affected.
    inner = torch.zeros(S, S, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    assert torch.allclose(got[:, inner], ref[:, inner], atol=1e-5)


def test_box_marks_the_centre_of_the_crop():
    """The proposal itself fills exactly the central (S - 2P) pixels; the rest is context."""
    img = torch.zeros(3, 60, 80)
    img[:, 12:36, 20:44] = 1.0
    got = crop_regions(img, torch.tensor([[20.0, 12.0, 44.0, 36.0]]), S, P)[0, 0]
    assert torch.all(got[P:S - P, P:S - P] == 1)
    assert torch.all(got[:P - 1] == 0) and torch.all(got[:, S - P + 1:] == 0)


def test_fill_is_the_mean_and_dtype_device_kept():
    img = torch.ones(3, 20, 20)
    far = torch.tensor([[100.0, 100.0, 140.0, 150.0]])
    assert torch.all(crop_regions(img, far, S, P) == 0)
    half = crop_regions(img.half(), torch.tensor([[-20.0, 0.0, 20.0, 20.0]]), S, 0)
    assert half.dtype == torch.float16
    assert torch.all(half[0, :, :, : S // 2 - 1] == 0) and torch.all(half[0, :, :, S // 2 + 1:] == 1)


def test_empty_and_chunked():
    img = image()
    assert crop_regions(img, torch.zeros((0, 4)), S, P).shape == (0, 3, S, S)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(37, 2, generator=g) * 70 - 5
    boxes = torch.cat([xy, xy + torch.rand(37, 2, generator=g) * 30 + 1], 1)
    full = crop_regions(img, boxes, S, P)
    parts = list(iter_region_chunks(img, boxes, S, P, chunk_size=10))
    assert [p[1].shape[0] for p in parts] == [10, 10, 10, 7]
    assert torch.equal(torch.cat([p[1] for p in parts]), full)
    assert list(iter_region_chunks(img, torch.zeros((0, 4)), S, P)) == []
