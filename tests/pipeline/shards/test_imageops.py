"""Crop geometry, DCT-scaled decoding and encoding of single views."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from geo_ssl.pipeline.common.errors import RejectError
from geo_ssl.pipeline.shards import imageops
from tests.index_factory import smooth_image


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("ratio", "mult"),
    [
        (0.9, 0.15),
        (0.5, 0.15),
        (0.45, 0.2),
        (0.4, 0.2),
        (0.35, 0.3),
        (0.25, 0.5),
        (0.15, 1.0),
        (0.1, 1.0),
        (0.05, 2.0),
    ],
)
def test_auto_context_follows_fmow_baseline_table(ratio: float, mult: float) -> None:
    assert imageops.context_multiplier(round(ratio * 1000), 1000) == mult


def test_crop_region_auto_float_none_and_clipping() -> None:
    # 100 px box in a 1000 px image: ratio 0.1 -> multiplier 1 -> 50 px margin each side.
    assert imageops.crop_region([450, 450, 100, 100], (1000, 1000), "auto") == (400, 400, 200, 200)
    # Per axis: width ratio 0.6 (0.15 -> 90 px total, 45 per side), height ratio 0.05 (2 -> 50 per side).
    assert imageops.crop_region([200, 500, 600, 50], (1000, 1000), "auto") == (155, 450, 690, 150)
    assert imageops.crop_region([450, 450, 100, 100], (1000, 1000), 0.5) == (425, 425, 150, 150)
    assert imageops.crop_region([450, 450, 100, 100], (1000, 1000), 0.0) == (450, 450, 100, 100)
    assert imageops.crop_region([450, 450, 100, 100], (1000, 800), None) == (0, 0, 1000, 800)
    # Near a corner the margin is clipped to the image.
    assert imageops.crop_region([10, 20, 100, 100], (1000, 1000), "auto") == (0, 0, 160, 170)
    with pytest.raises(RejectError) as err:
        imageops.crop_region([1200, 10, 50, 50], (1000, 1000), "auto")
    assert err.value.reason == "bad_box"


def test_output_size_never_upscales_unless_asked() -> None:
    assert imageops.output_size((1000, 500), 448) == (896, 448)
    assert imageops.output_size((300, 900), 448) == (300, 900)  # shorter side 300 < 448: kept
    assert imageops.output_size((300, 900), 448, upscale=True) == (448, 1344)
    assert imageops.output_size((448, 600), 448) == (448, 600)


def test_dct_scale_only_when_the_reduced_crop_covers_the_output() -> None:
    assert imageops.dct_scale((4000, 3000), (597, 448)) == 4  # 3000 >= 4*448, < 8*448
    assert imageops.dct_scale((900, 900), (448, 448)) == 2
    assert imageops.dct_scale((895, 2000), (448, 1000)) == 1  # 895 < 2*448: a 1/2 decode would upscale
    assert imageops.dct_scale((100, 100), (100, 100)) == 1


def test_transform_box_maps_into_stored_pixels() -> None:
    # crop (100, 100, 400, 200) -> 200 x 100: scale 0.5
    assert imageops.transform_box([200, 150, 100, 50], (100, 100, 400, 200), (200, 100)) == (50, 25, 50, 25)
    # A box partly outside the crop is clipped to the stored image.
    assert imageops.transform_box([0, 0, 300, 300], (100, 100, 400, 200), (200, 100)) == (0, 0, 100, 100)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return jpeg_bytes(smooth_image(np.random.default_rng(1), (2400, 1800)))


def test_draft_decodes_at_reduced_size_and_matches_full_decode(big_jpeg: bytes) -> None:
    full, _, crop, s_full = imageops.decode_crop(
        io.BytesIO(big_jpeg), [0, 0, 2400, 1800], None, 448, dct=False
    )
    fast, orig, crop2, s_fast = imageops.decode_crop(io.BytesIO(big_jpeg), [0, 0, 2400, 1800], None, 448)
    assert (s_full, s_fast) == (1, 4)  # 1800 / 4 = 450 >= 448; 1/8 would give 225 < 448
    assert orig == (2400, 1800) and crop == crop2 == (0, 0, 2400, 1800)
    assert full.size == fast.size == (597, 448)
    # The decoder really produced the reduced image: draft on the same file reports 1/4 size.
    with Image.open(io.BytesIO(big_jpeg)) as im:
        im.draft(None, (2400 // 4, 1800 // 4))
        assert im.size == (600, 450)
    diff = np.abs(np.asarray(full, dtype=np.int16) - np.asarray(fast, dtype=np.int16))
    assert diff.mean() < 2.0, f"DCT-scaled decode differs by {diff.mean():.2f} on average"


def test_draft_not_used_when_the_crop_is_small(big_jpeg: bytes) -> None:
    # A 500 px crop (box 400 + 0.25 context) resized to 448 must come from the full-size decode.
    img, _, crop, scale = imageops.decode_crop(io.BytesIO(big_jpeg), [1000, 700, 400, 400], 0.25, 448)
    assert crop == (950, 650, 500, 500) and scale == 1 and img.size == (448, 448)
    # A 1000 px crop allows 1/2 but not 1/4.
    img, _, crop, scale = imageops.decode_crop(io.BytesIO(big_jpeg), [700, 400, 1000, 1000], 0.0, 448)
    assert scale == 2 and crop[2] / scale >= img.size[0]


def test_process_view_stored_box_covers_the_object() -> None:
    canvas = np.full((1200, 1600, 3), 30, dtype=np.uint8)
    box = [700, 500, 160, 120]
    canvas[500:620, 700:860] = (250, 20, 20)
    view = imageops.process_view(io.BytesIO(jpeg_bytes(Image.fromarray(canvas))), box, "auto", 64, quality=95)
    stored = np.asarray(Image.open(io.BytesIO(view.jpeg)).convert("RGB"), dtype=np.int16)
    assert stored.shape[:2] == (view.size[1], view.size[0]) and min(view.size) == 64
    red = (stored[..., 0] > 150) & (stored[..., 1] < 100)
    ys, xs = np.nonzero(red)
    x, y, w, h = view.box
    assert abs(xs.min() - x) <= 2 and abs(ys.min() - y) <= 2
    assert abs(xs.max() + 1 - (x + w)) <= 2 and abs(ys.max() + 1 - (y + h)) <= 2


def test_process_view_is_deterministic_and_handles_other_modes() -> None:
    gray = smooth_image(np.random.default_rng(2), (300, 200)).convert("L")
    data = jpeg_bytes(gray)
    a = imageops.process_view(io.BytesIO(data), [50, 50, 100, 80], "auto", 64, quality=90)
    b = imageops.process_view(io.BytesIO(data), [50, 50, 100, 80], "auto", 64, quality=90)
    assert a.jpeg == b.jpeg
    assert Image.open(io.BytesIO(a.jpeg)).mode == "RGB"
    png = io.BytesIO()
    smooth_image(np.random.default_rng(3), (300, 200)).save(png, format="PNG")
    png.seek(0)
    view = imageops.process_view(png, [0, 0, 300, 200], None, 100, quality=90)
    assert view.scale == 1 and view.size == (150, 100)


def test_truncated_jpeg_is_a_decode_error(big_jpeg: bytes) -> None:
    with pytest.raises(RejectError) as err:
        imageops.process_view(io.BytesIO(big_jpeg[: len(big_jpeg) // 2]), [0, 0, 2400, 1800], None, 448, 90)
    assert err.value.reason == "decode_error"
    with pytest.raises(RejectError) as err:
        imageops.process_view(io.BytesIO(b"not an image"), [0, 0, 10, 10], None, 448, 90)
    assert err.value.reason == "decode_error"
