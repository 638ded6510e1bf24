"""The CPU MoCo-v2 augmentation (8-bit OpenCV ops) and JPEG decode against torchvision's reference ops."""

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
    BatchBuffers,
    MocoV2Augment,
    ViewParams,
    augment_crop,
    eval_params,
    finish_views,
    gaussian_blur,
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


def test_blur_sigma_scales_with_the_crop_size():
    """MoCo-v2's sigma 0.1-2 is in pixels of a 224 px crop: the same draws, scaled by S / 224."""
    draws = {}
    for size, reference in ((224, 224), (64, 224), (64, 0), (448, 224)):
        rng = random.Random(3)
        draws[size, reference] = [MocoV2Augment(image_size=size, blur_reference=reference).sample(rng, 300, 300)
                                  for _ in range(200)]  # fmt: skip
    base = np.array([v.blur_sigma for v in draws[224, 224]])
    assert base.max() > 1.5 and np.array_equal(base, [v.blur_sigma for v in draws[64, 0]])
    np.testing.assert_allclose([v.blur_sigma for v in draws[64, 224]], base * 64 / 224, rtol=1e-12)
    np.testing.assert_allclose([v.blur_sigma for v in draws[448, 224]], base * 2, rtol=1e-12)
    assert [v.box for v in draws[64, 224]] == [v.box for v in draws[224, 224]]  # nothing else moves


def test_sample_probabilities_ranges_and_order_permutation():
    aug = MocoV2Augment(image_size=224)
    rng = random.Random(1)
    views = [aug.sample(rng, 448, 448) for _ in range(4000)]
    assert abs(np.mean([bool(v.jitter) for v in views]) - 0.8) < 0.03
    assert abs(np.mean([v.gray for v in views]) - 0.2) < 0.03
    assert abs(np.mean([v.blur_sigma > 0 for v in views]) - 0.5) < 0.03
    assert abs(np.mean([v.flip for v in views]) - 0.5) < 0.03
    sigmas = np.array([v.blur_sigma for v in views if v.blur_sigma > 0])
    assert 0.1 <= sigmas.min() and sigmas.max() <= 2.0 and abs(sigmas.mean() - 1.05) < 0.05  # U(0.1, 2)
    factors: dict[str, list[float]] = {op: [] for op in ("brightness", "contrast", "saturation", "hue")}
    position = np.zeros((4, 4))  # op x position counts
    ops = sorted(factors)
    for v in views:
        if v.jitter:
            assert sorted(op for op, _ in v.jitter) == ops
            for pos, (op, f) in enumerate(v.jitter):
                factors[op].append(f)
                position[ops.index(op), pos] += 1
    for op in ("brightness", "contrast", "saturation"):
        f = np.array(factors[op])
        assert (
            0.6 <= f.min()
            and f.max() <= 1.4
            and abs(f.mean() - 1.0) < 0.02
            and abs(f.std() - 0.8 / 12**0.5) < 0.01
        )
    hue = np.array(factors["hue"])
    assert -0.1 <= hue.min() and hue.max() <= 0.1 and abs(hue.mean()) < 0.005
    # torchvision's randperm: every op equally likely at every position, all 24 orders occur.
    assert np.abs(position / position.sum(1, keepdims=True) - 0.25).max() < 0.03
    assert len({tuple(op for op, _ in v.jitter) for v in views if v.jitter}) == 24


def _views(n: int = 4, size: int = 64) -> list[torch.Tensor]:
    """Fixed views: textured crops from muted (satellite-like) to fully saturated colours."""
    sats = (0.4, 0.7, 1.0, 1.0, 0.5, 0.9)
    return [_crop(_jpeg(96, 96, seed=10 + i, saturation=sats[i % len(sats)]), size) for i in range(n)]


def _augmented_levels(crop: torch.Tensor, params: ViewParams) -> torch.Tensor:
    return _to_levels(finish_views(augment_crop(crop, params)[None])[0])


@pytest.mark.parametrize(
    ("op", "factor", "reference"),
    [
        ("brightness", 1.4, TF.adjust_brightness),
        ("brightness", 0.6, TF.adjust_brightness),
        ("contrast", 1.4, TF.adjust_contrast),
        ("contrast", 0.6, TF.adjust_contrast),
        ("saturation", 1.4, TF.adjust_saturation),
        ("saturation", 0.6, TF.adjust_saturation),
        ("hue", 0.1, TF.adjust_hue),
        ("hue", -0.1, TF.adjust_hue),
        ("hue", 0.037, TF.adjust_hue),
    ],
)
def test_each_colour_op_within_2_levels_of_torchvision(op, factor, reference):
    diffs = []
    for crop in _views():
        ours = _augmented_levels(crop, ViewParams(box=(0, 0, 1, 1), jitter=((op, factor),)))
        ref = reference(crop.contiguous(), factor).float()
        diffs.append(float((ours - ref).abs().mean()))
    assert np.mean(diffs) < 2.0, diffs  # the bar: mean absolute difference over fixed views
    assert max(diffs) < 2.0


def test_hue_is_a_real_hsv_rotation():
    """Not a YIQ approximation: a 0.1 turn is 36 degrees of HSV hue on every coloured pixel."""
    crop = _views(3)[2]
    before = _hsv(crop.float())
    after = _hsv(_augmented_levels(crop, ViewParams(box=(0, 0, 1, 1), jitter=(("hue", 0.1),))))
    coloured = (before[:, 1] > 0.3) & (before[:, 2] > 0.2)
    shift = (after[coloured, 0] - before[coloured, 0] + 0.5) % 1.0 - 0.5
    assert abs(float(np.median(shift)) - 0.1) < 0.005 and np.percentile(np.abs(shift - 0.1), 90) < 0.02


def test_jitter_order_grayscale_blur_flip_follow_torchvision():
    """The whole chain in the view's order (each op rounded to 8 bits in between, as torchvision on
    uint8), then grayscale, then blur (Pillow, as MoCo), then flip."""
    from PIL import ImageFilter

    order = (("hue", 0.06), ("contrast", 1.3), ("saturation", 0.7), ("brightness", 1.2))
    for crop, gray, sigma, flip in zip(
        _views(3), (False, True, False), (0.0, 1.3, 2.0), (True, False, True), strict=True
    ):
        params = ViewParams(box=(0, 0, 1, 1), jitter=order, gray=gray, blur_sigma=sigma, flip=flip)
        ref = crop.contiguous()
        for op, f in order:
            ref = getattr(TF, f"adjust_{op}")(ref, f)
        if gray:
            ref = TF.rgb_to_grayscale(ref, 3)
        if sigma:
            pil = Image.fromarray(ref.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius=sigma))
            ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        if flip:
            ref = ref.flip(-1)
        diff = (_augmented_levels(crop, params) - ref.float()).abs()
        assert diff.mean() < 2.0, (gray, sigma, flip, float(diff.mean()))
    # The order matters and is honoured: on a bright view, brightness 1.4 clips before or after contrast 0.6.
    crop = (_views(1)[0].int() + 60).clamp(0, 255).to(torch.uint8)
    bc, cb = (("brightness", 1.4), ("contrast", 0.6)), (("contrast", 0.6), ("brightness", 1.4))
    a = _augmented_levels(crop, ViewParams(box=(0, 0, 1, 1), jitter=bc))
    b = _augmented_levels(crop, ViewParams(box=(0, 0, 1, 1), jitter=cb))
    ref_a = TF.adjust_contrast(TF.adjust_brightness(crop, 1.4), 0.6).float()
    assert (a - b).abs().mean() > 5.0 and (a - ref_a).abs().mean() < 2.0


def _hsv(levels: torch.Tensor) -> np.ndarray:
    pixels = levels.reshape(3, -1).T.double().numpy() / 255.0
    return np.array([colorsys.rgb_to_hsv(*p) for p in pixels])


def test_grayscale_matches_torchvision():
    crop = _crop(_jpeg(seed=3, saturation=0.8))
    gray = _augmented_levels(crop, ViewParams(box=(0, 0, 1, 1), gray=True))
    assert (gray - TF.rgb_to_grayscale(crop.contiguous(), 3).float()).abs().max() < 1.01


def test_blur_is_mocos_pillow_gaussian_blur():
    from PIL import ImageFilter

    for crop in _views(2):
        img = crop.permute(1, 2, 0).contiguous().numpy()
        for sigma in (0.1, 0.5, 1.0, 2.0):
            ours = gaussian_blur(img, sigma).astype(np.float64)
            pil = np.asarray(
                Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.float64
            )
            assert np.abs(ours - pil).mean() < 1.0, sigma


def test_finish_views_normalises_in_place_and_buffers_are_reused_only_when_free():
    crops = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    pool = BatchBuffers()
    first = pool.get((5, 3, 16, 16))
    res = finish_views(list(crops), None, out=first)  # a list of crops: no stacking
    ref = (crops.float() / 255.0 - MEAN) / STD
    assert res.data_ptr() == first.data_ptr() and (res - ref).abs().max() < 1e-5
    assert (finish_views(crops) - ref).abs().max() < 1e-5  # a stacked batch, fresh output
    ptr = first.data_ptr()
    del res
    assert pool.get((5, 3, 16, 16)).data_ptr() != ptr  # the consumer still holds the batch
    view = first[0]
    del first
    assert pool.get((5, 3, 16, 16)).data_ptr() != ptr  # ... or a view of it
    del view
    assert pool.get((5, 3, 16, 16)).data_ptr() == ptr  # released: the warm memory is reused
    with pytest.raises(ValueError, match="uint8"):
        finish_views(crops.float())


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


def test_augment_crop_flip_blur_and_no_op():
    crop = _crop(_jpeg(seed=2))
    assert spatial is augment_crop  # the name the loader calls
    assert augment_crop(crop, ViewParams(box=(0, 0, 1, 1))) is crop
    flipped = augment_crop(crop, ViewParams(box=(0, 0, 1, 1), flip=True))
    assert torch.equal(flipped, crop.flip(-1))
    blurred = augment_crop(crop, ViewParams(box=(0, 0, 1, 1), blur_sigma=2.0))
    assert blurred.shape == crop.shape and blurred.dtype == torch.uint8
    # Blur keeps the mean and removes high frequencies.
    assert abs(blurred.float().mean() - crop.float().mean()) < 1.0
    assert blurred.float().diff(dim=-1).abs().mean() < 0.7 * crop.float().diff(dim=-1).abs().mean()
    with pytest.raises(ValueError, match="unknown colour op"):
        augment_crop(crop, ViewParams(box=(0, 0, 1, 1), jitter=(("gamma", 1.2),)))


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
        augment_crop(c, p)
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


class _PoolStream(torch.utils.data.IterableDataset):
    def __iter__(self):
        pool = BatchBuffers()
        for i in range(3):
            out = pool.get((2, 3, 4, 4))
            out.fill_(float(i))
            yield {"q": out[0], "k": out[1]}


def test_batch_buffers_in_a_worker_are_fresh_shared_memory():
    """In a DataLoader worker the batch leaves through shared memory while the main process reads it:
    never reused there, and allocated in shared memory directly (no copy on the way out)."""
    got = list(torch.utils.data.DataLoader(_PoolStream(), batch_size=None, num_workers=1))
    assert [float(b["q"].mean()) for b in got] == [0.0, 1.0, 2.0]  # earlier batches not overwritten
    assert all(b["k"].is_shared() for b in got)


def test_plain_bilinear_for_mild_scales_matches_the_antialiased_resize():
    """Up to 1.25x downscale (and any upscale) OpenCV's bilinear stands in for torch's antialiased one."""
    from geo_ssl.training.data.decode import crop_resize

    image = decode_rgb(_jpeg(160, 160, seed=8))
    for side in (40, 56, 60):  # 48 px output: an upscale, 1.17x and 1.25x downscales
        ours = crop_resize(image, (10, 20, side, side), 48).float()
        region = torch.from_numpy(image[20 : 20 + side, 10 : 10 + side]).permute(2, 0, 1)[None].float()
        ref = torch.nn.functional.interpolate(region, size=(48, 48), mode="bilinear", antialias=True)[0]
        assert ours.shape == (3, 48, 48) and (ours - ref).abs().mean() < 1.5, side
