"""The fast MoCo-v2 augmentation and JPEG decode against torchvision's reference ops."""

from __future__ import annotations

import colorsys
import io
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from geo_ssl.training.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MocoV2Augment,
    ViewParams,
    eval_params,
    finish_views,
    random_resized_crop_box,
    spatial,
    torchvision_mocov2,
)
from geo_ssl.training.data.decode import (
    JpegError,
    center_box,
    dct_reduction,
    decode_crops,
    decode_rgb,
    jpeg_size,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _jpeg(w: int = 96, h: int = 80, seed: int = 0, saturation: float = 1.0) -> bytes:
    """A textured test image; saturation < 1 mutes the colours towards grey, as in satellite views."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 220, (h // 8, w // 8, 3)).astype(np.float64)
    coarse = coarse.mean(-1, keepdims=True) + saturation * (coarse - coarse.mean(-1, keepdims=True))
    img = Image.fromarray(coarse.round().astype(np.uint8)).resize((w, h), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: back to 0..255 float."""
    return (x * STD + MEAN) * 255.0


def _crop(data: bytes, size: int = 64) -> torch.Tensor:
    w, h = jpeg_size(data)
    return decode_crops(data, [center_box(w, h)], size, w, h)[0]


def test_random_resized_crop_box_stays_inside_and_matches_torchvision():
    from torchvision.transforms import RandomResizedCrop

    rng = random.Random(0)
    torch.manual_seed(0)
    ours, ref = [], []
    image = torch.zeros(3, 600, 448)
    for _ in range(2000):
        x, y, w, h = random_resized_crop_box(rng, 448, 600, (0.2, 1.0), (3 / 4, 4 / 3))
        assert 0 <= x and 0 <= y and x + w <= 448 and y + h <= 600 and w > 0 and h > 0
        ours.append((w * h / (448 * 600), w / h))
        _, _, rh, rw = RandomResizedCrop.get_params(image, (0.2, 1.0), (3 / 4, 4 / 3))
        ref.append((rw * rh / (448 * 600), rw / rh))
    ours_a, ref_a = np.array(ours), np.array(ref)
    assert ours_a[:, 0].min() >= 0.19 and ours_a[:, 0].max() <= 1.0
    assert abs(ours_a[:, 0].mean() - ref_a[:, 0].mean()) < 0.02  # same area distribution
    assert abs(ours_a[:, 1].mean() - ref_a[:, 1].mean()) < 0.02  # same aspect distribution


def test_sample_probabilities_and_ranges():
    aug = MocoV2Augment(image_size=224)
    rng = random.Random(1)
    views = [aug.sample(rng, 448, 448) for _ in range(3000)]
    assert abs(np.mean([bool(v.jitter) for v in views]) - 0.8) < 0.03
    assert abs(np.mean([v.gray for v in views]) - 0.2) < 0.03
    assert abs(np.mean([v.blur_sigma > 0 for v in views]) - 0.5) < 0.03
    assert abs(np.mean([v.flip for v in views]) - 0.5) < 0.03
    sigmas = [v.blur_sigma for v in views if v.blur_sigma > 0]
    assert 0.1 <= min(sigmas) and max(sigmas) <= 2.0
    for v in views:
        if v.jitter:
            ops = dict(v.jitter)
            assert sorted(ops) == ["brightness", "contrast", "hue", "saturation"]
            assert all(0.6 <= ops[k] <= 1.4 for k in ("brightness", "contrast", "saturation"))
            assert -0.1 <= ops["hue"] <= 0.1
    orders = {tuple(op for op, _ in v.jitter) for v in views if v.jitter}
    assert len(orders) > 12  # the four ops come in random order


@pytest.mark.parametrize(
    ("op", "factor", "reference"),
    [
        ("brightness", 1.35, TF.adjust_brightness),
        ("brightness", 0.65, TF.adjust_brightness),
        ("contrast", 1.4, TF.adjust_contrast),
        ("contrast", 0.6, TF.adjust_contrast),
        ("saturation", 1.4, TF.adjust_saturation),
        ("saturation", 0.6, TF.adjust_saturation),
    ],
)
def test_fused_colour_ops_match_torchvision(op, factor, reference):
    crop = _crop(_jpeg())
    ours = _to_levels(finish_views(crop[None], [ViewParams(box=(0, 0, 1, 1), jitter=((op, factor),))])[0])
    ref = reference(crop.contiguous(), factor).float()
    diff = (ours - ref).abs()
    assert diff.mean() < 0.8 and diff.max() < 2.5  # rounding of uint8 intermediates only


def _hsv(levels: torch.Tensor) -> np.ndarray:
    pixels = levels.reshape(3, -1).T.double().numpy() / 255.0
    return np.array([colorsys.rgb_to_hsv(*p) for p in pixels])


def test_grayscale_matches_and_hue_shifts_hsv_hue_by_the_factor():
    crop = _crop(_jpeg(seed=3, saturation=0.4))
    gray = _to_levels(finish_views(crop[None], [ViewParams(box=(0, 0, 1, 1), gray=True)])[0])
    assert (gray - TF.rgb_to_grayscale(crop.contiguous(), 3).float()).abs().max() < 2.0
    before = _hsv(crop.float())
    coloured = before[:, 1] > 0.15
    for f in (0.08, -0.05):
        ours = _to_levels(finish_views(crop[None], [ViewParams(box=(0, 0, 1, 1), jitter=(("hue", f),))])[0])
        after = _hsv(ours)
        # YIQ rotation instead of torchvision's HSV round trip: the HSV hue moves by the factor, as there.
        shift = (after[coloured, 0] - before[coloured, 0] + 0.5) % 1.0 - 0.5
        assert abs(float(np.median(shift)) - f) < 0.015


def test_contrast_after_brightness_uses_the_brightened_mean():
    crop = _crop(_jpeg(seed=5))
    ref = TF.adjust_contrast(TF.adjust_brightness(crop.contiguous(), 0.7), 1.3).float()
    params = ViewParams(box=(0, 0, 1, 1), jitter=(("brightness", 0.7), ("contrast", 1.3)))
    ours = _to_levels(finish_views(crop[None], [params])[0])
    assert (ours - ref).abs().mean() < 1.0


def test_eval_transform_matches_torchvision_resize_center_crop():
    data = _jpeg(120, 90, seed=7)
    w, h = jpeg_size(data)
    crop = decode_crops(data, [eval_params(w, h).box], 48, w, h)[0]
    ours = finish_views(crop[None], [eval_params(w, h)])[0]
    img = TF.pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
    ref = TF.center_crop(TF.resize(img, 48, antialias=True), 48).float() / 255.0
    ref = (ref - MEAN) / STD
    assert ours.shape == (3, 48, 48) and ours.dtype == torch.float32
    assert (ours - ref).abs().mean() < 0.05  # decoder and resampler differ a little, nothing more


def test_spatial_flip_and_blur():
    crop = _crop(_jpeg(seed=2))
    flipped = spatial(crop, ViewParams(box=(0, 0, 1, 1), flip=True))
    assert torch.equal(flipped, crop.flip(-1))
    blurred = spatial(crop, ViewParams(box=(0, 0, 1, 1), blur_sigma=2.0))
    assert blurred.shape == crop.shape and blurred.dtype == torch.uint8
    # Blur keeps the mean and removes high frequencies.
    assert abs(blurred.float().mean() - crop.float().mean()) < 1.0
    assert blurred.float().diff(dim=-1).abs().mean() < 0.7 * crop.float().diff(dim=-1).abs().mean()


def test_dct_reduction_keeps_crops_at_least_image_size():
    assert dct_reduction([(0, 0, 448, 448)], 224) == 2
    assert dct_reduction([(0, 0, 447, 600)], 224) == 1
    assert dct_reduction([(0, 0, 900, 900)], 224) == 4
    assert dct_reduction([(0, 0, 900, 900), (0, 0, 300, 300)], 224) == 1  # the smaller crop decides
    assert dct_reduction([(0, 0, 5000, 5000)], 64) == 8


def test_reduced_decode_is_close_to_full_decode():
    data = _jpeg(256, 256, seed=4)
    full = decode_crops(data, [(0, 0, 255, 255)], 64, 256, 256)[0].float()  # reduction 2 (255/2 >= 64)
    assert dct_reduction([(0, 0, 255, 255)], 64) == 2
    direct = torch.from_numpy(decode_rgb(data)).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(
        direct[:, :, :255, :255], size=(64, 64), mode="bilinear", antialias=True
    )[0]
    assert (full - ref).abs().mean() < 6.0  # DCT-domain + bilinear vs direct antialias: same picture
    assert decode_rgb(data, 4).shape == (64, 64, 3)


def test_corrupt_jpeg_raises_jpeg_error():
    data = _jpeg()
    with pytest.raises(JpegError):
        decode_rgb(data[: len(data) // 2])
    with pytest.raises(JpegError):
        decode_rgb(b"not a jpeg at all")
    with pytest.raises(JpegError):
        jpeg_size(b"\x89PNG garbage")


def test_batched_views_differ_and_are_normalised():
    data = _jpeg(128, 128, seed=6)
    aug = MocoV2Augment(image_size=32)
    rng = random.Random(0)
    params = [aug.sample(rng, 128, 128) for _ in range(8)]
    crops = [
        spatial(c, p)
        for c, p in zip(decode_crops(data, [p.box for p in params], 32, 128, 128), params, strict=True)
    ]
    out = finish_views(torch.stack(crops), params)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    levels = _to_levels(out)
    assert levels.min() > -0.5 and levels.max() < 255.5  # clamped to the pixel range
    assert len({round(float(v.sum()), 3) for v in out}) == 8


def test_torchvision_reference_pipeline_runs():
    img = Image.open(io.BytesIO(_jpeg(100, 100)))
    out = torchvision_mocov2(32)(img)
    assert out.shape == (3, 32, 32)
