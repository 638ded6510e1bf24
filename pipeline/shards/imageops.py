"""Per-view image work for write-shards: crop with context, decode at reduced size, resize, encode.

Boxes are `[x, y, w, h]` in pixels (fMoW convention). The geometry helpers are pure functions so the
shard planner can predict output sizes without touching any pixel.

Decoding uses Pillow's JPEG `draft()`, which lets libjpeg scale by 1/2, 1/4 or 1/8 in the DCT domain.
That is only used when the reduced crop still has at least the output size, so the final resize is
still a proper downsample and the result differs from a full-size decode only by resampling noise.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

from geo_ssl.pipeline.common.errors import RejectError

# fMoW-rgb images reach about 8200 px a side; Pillow's default bomb guard (about 89 Mpx) would refuse
# the largest ones. 20k x 20k still guards against absurd headers.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 20_000 * 20_000)

Box = tuple[int, int, int, int]
Size = tuple[int, int]

#: fMoW baseline context rule: (lower bound of box/image ratio, margin multiplier), checked in order.
#: The multiplier is the total margin as a fraction of the box side, split evenly on both sides.
AUTO_CONTEXT: tuple[tuple[float, float], ...] = ((0.5, 0.15), (0.4, 0.2), (0.3, 0.3), (0.2, 0.5), (0.1, 1.0))
AUTO_CONTEXT_SMALLEST = 2.0  # box smaller than a tenth of the image side
DCT_SCALES = (8, 4, 2)
RESAMPLE = Image.Resampling.BICUBIC


def context_multiplier(box_len: int, image_len: int) -> float:
    """Margin multiplier of the fMoW baseline for one axis: smaller boxes get relatively more context.

    The baseline compares the box width with the image *height* (and vice versa); here each axis is
    compared with its own image side, which is the same for square images and what was meant.
    """
    ratio = box_len / image_len if image_len > 0 else 0.0
    for lower, mult in AUTO_CONTEXT:
        if ratio >= lower:
            return mult
    return AUTO_CONTEXT_SMALLEST


def crop_region(box: Box | list[int], image_size: Size, context: str | float | None) -> Box:
    """The region to cut from the original image: the box grown by its margin, clipped to the image.

    context: "auto" (fMoW baseline rule per axis), a float (fixed multiplier: the crop is the box grown
    by `context * side` in total, half on each side), or None (the whole image, no crop).
    """
    width, height = image_size
    if context is None:
        return (0, 0, width, height)
    x, y, w, h = (int(v) for v in box)
    if context == "auto":
        mult_x, mult_y = context_multiplier(w, width), context_multiplier(h, height)
    else:
        mult_x = mult_y = float(context)
    pad_x, pad_y = int(w * mult_x / 2.0), int(h * mult_y / 2.0)
    x0, y0 = max(0, x - pad_x), max(0, y - pad_y)
    x1, y1 = min(width, x + w + pad_x), min(height, y + h + pad_y)
    if x1 <= x0 or y1 <= y0:
        raise RejectError("bad_box", f"box {[x, y, w, h]} lies outside the {width}x{height} image")
    return (x0, y0, x1 - x0, y1 - y0)


def output_size(crop_size: Size, resize: int, upscale: bool = False) -> Size:
    """Stored size: shorter side `resize`, aspect kept; crops already smaller stay as they are."""
    w, h = crop_size
    short = min(w, h)
    if short == resize or (short < resize and not upscale):
        return (w, h)
    if w <= h:
        return (resize, max(1, round(h * resize / w)))
    return (max(1, round(w * resize / h)), resize)


def dct_scale(crop_size: Size, out_size: Size) -> int:
    """Largest JPEG DCT scale (8, 4, 2) whose reduced crop still covers the output size, else 1."""
    for s in DCT_SCALES:
        if crop_size[0] >= s * out_size[0] and crop_size[1] >= s * out_size[1]:
            return s
    return 1


def transform_box(box: Box | list[int], crop: Box, out_size: Size) -> Box:
    """The object box in stored-image pixels (after crop and resize), clipped to the stored image."""
    x, y, w, h = (int(v) for v in box)
    cx, cy, cw, ch = crop
    sx, sy = out_size[0] / cw, out_size[1] / ch
    x0 = min(max(round((x - cx) * sx), 0), out_size[0])
    y0 = min(max(round((y - cy) * sy), 0), out_size[1])
    x1 = min(max(round((x + w - cx) * sx), 0), out_size[0])
    y1 = min(max(round((y + h - cy) * sy), 0), out_size[1])
    return (x0, y0, x1 - x0, y1 - y0)


@dataclass(frozen=True)
class ViewImage:
    """One processed view: the JPEG bytes and the geometry recorded in the sample's json."""

    jpeg: bytes
    orig_size: Size
    crop: Box
    size: Size
    box: Box
    scale: int  # DCT scale used while decoding (1 = full size)


def decode_crop(
    source: BinaryIO | str, box: Box | list[int], context: str | float | None, resize: int,
    upscale: bool = False, dct: bool = True,
) -> tuple[Image.Image, Size, Box, int]:  # fmt: skip
    """Decode the crop of one view at its output size; returns (image, orig_size, crop, dct_scale)."""
    with Image.open(source) as im:
        orig_size = im.size
        crop = crop_region(box, orig_size, context)
        out = output_size(crop[2:], resize, upscale)
        scale = dct_scale(crop[2:], out) if dct and im.format == "JPEG" else 1
        if scale > 1:
            drafted = im.draft(None, (orig_size[0] // scale, orig_size[1] // scale))
            scale = round(orig_size[0] / drafted[1][2]) if drafted else 1
        im.load()
        region = (crop[0] / scale, crop[1] / scale, (crop[0] + crop[2]) / scale, (crop[1] + crop[3]) / scale)
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        if out == crop[2:] and scale == 1:
            result = rgb.crop(tuple(int(v) for v in region))
        else:
            result = rgb.resize(out, RESAMPLE, box=region)
    return result, orig_size, crop, scale


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Baseline JPEG without metadata: equal pixels and quality give equal bytes. A restart marker after
    every row of MCUs (2 bytes each, about 0.1% of a 448 px view) lets the loader decode only the rows a
    crop needs (training/data/decode.py row_band); the pixels are the same."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality), restart_marker_rows=1)
    return buf.getvalue()


def process_view(
    source: BinaryIO | str, box: Box | list[int], context: str | float | None, resize: int,
    quality: int, upscale: bool = False, dct: bool = True,
) -> ViewImage:  # fmt: skip
    """Crop, resize and encode one view; an undecodable image raises RejectError('decode_error')."""
    try:
        image, orig_size, crop, scale = decode_crop(source, box, context, resize, upscale, dct)
    except RejectError:
        raise
    except FileNotFoundError as exc:
        raise RejectError("missing_image", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RejectError("decode_error", f"{type(exc).__name__}: {exc}") from exc
    return ViewImage(
        jpeg=encode_jpeg(image, quality), orig_size=orig_size, crop=crop, size=image.size,
        box=transform_box(box, crop, image.size), scale=scale,
    )  # fmt: skip
