"""JPEG bytes to a cropped, resized uint8 tensor, decoding no more pixels than the crop needs.

The crop box is chosen on the stored image size (read from the JPEG header) before decoding. The
decoder then downsizes in the DCT domain by the largest power of two (1/2, 1/4, 1/8) that keeps the
crop at least `size` pixels on both sides, so the final resize never upsamples more than the crop
itself asks for. A location's view used by two crops (a single-view location, or augment off) is
decoded once, at the scale the smaller crop allows.

simplejpeg (libjpeg-turbo, fast integer DCT and upsampling) is the decoder; Pillow is the fallback for the
rare JPEG it refuses (CMYK, arithmetic coding). Both reject truncated data, so a corrupt view raises
`JpegError` instead of yielding a half-grey image.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency; Pillow keeps things working
    simplejpeg = None

#: (x, y, w, h) in pixels of the stored image; floats allowed.
Box = tuple[float, float, float, float]

_SCALES = (8, 4, 2, 1)
_PLAIN_BILINEAR_UP_TO = 1.25  # crop side / output side below which antialiasing is skipped


_SCRATCH = threading.local()  # one reusable decode buffer per thread (decode_crops)


class JpegError(ValueError):
    """The bytes are not a decodable JPEG (truncated, corrupt, or another format)."""


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG header, without decoding pixels."""
    if simplejpeg is not None:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(width), int(height)
        except ValueError:
            pass  # fall through to Pillow, which knows more exotic JPEGs
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception as exc:
        raise JpegError(f"not a readable JPEG header ({exc})") from exc


def dct_reduction(boxes: Sequence[Box], size: int) -> int:
    """Largest of 8, 4, 2, 1 that keeps every box at least `size` px wide and high after reduction."""
    smallest = min(min(b[2], b[3]) for b in boxes)
    for r in _SCALES:
        if smallest / r >= size:
            return r
    return 1


def decode_rgb(
    data: bytes,
    reduction: int = 1,
    width: int | None = None,
    height: int | None = None,
    fast: bool = True,
    scratch: bool = False,
) -> np.ndarray:
    """Decode to an RGB uint8 array (H, W, 3), downsized by `reduction` (1, 2, 4 or 8) in the DCT domain.

    `fast` uses libjpeg-turbo's fast integer IDCT and chroma upsampling: about 7% faster, under one
    level of difference on average, far below what the augmentation itself changes. `scratch`: decode
    into this thread's reusable buffer (no fresh pages per image: 4-8% of a decode, more in loader
    workers, whose allocator hands every large image fresh pages); the array is then only valid until
    the thread's next scratch decode, so copy what must outlive it.
    """
    if simplejpeg is not None:
        opts: dict = {"fastdct": fast, "fastupsample": fast}
        if scratch:
            if width is None or height is None:
                width, height = jpeg_size(data)
            opts["buffer"] = _scratch(3 * width * height)
        try:
            if reduction > 1:
                if width is None or height is None:
                    width, height = jpeg_size(data)
                return simplejpeg.decode_jpeg(
                    data,
                    colorspace="RGB",
                    min_width=math.ceil(width / reduction),
                    min_height=math.ceil(height / reduction),
                    min_factor=reduction,
                    **opts,
                )
            return simplejpeg.decode_jpeg(data, colorspace="RGB", **opts)
        except ValueError:
            pass  # Pillow decides: it reads a few JPEGs simplejpeg refuses and rejects truncated ones
    return _decode_pillow(data, reduction)


def _scratch(nbytes: int) -> memoryview:
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = _SCRATCH.buf = bytearray(nbytes)
    return memoryview(buf)


def _decode_pillow(data: bytes, reduction: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG":
                raise JpegError(f"expected a JPEG, found {img.format}")
            if reduction > 1:
                w, h = img.size
                img.draft("RGB", (math.ceil(w / reduction), math.ceil(h / reduction)))
            # Pillow pads truncated JPEGs with grey unless told otherwise; load() raises then.
            img.load()
            return np.asarray(img.convert("RGB"))
    except JpegError:
        raise
    except Exception as exc:
        raise JpegError(f"undecodable JPEG ({exc})") from exc


def crop_resize(
    image: np.ndarray,
    box: Box,
    size: int,
    scale_x: float = 1.0,
    scale_y: float = 1.0,
    out: np.ndarray | None = None,
) -> torch.Tensor:
    """Cut `box` (stored-image pixels, scaled by scale_x/y to `image`) and resize to (3, size, size) uint8
    with channels-last strides.

    Antialiased bilinear on uint8, as torchvision's RandomResizedCrop does; the channels-last view of
    the decoder's HWC array is the fast path of torch's uint8 resampler. Crops at most 1.25x the
    output size (upsampling, mild downscale) use OpenCV's plain bilinear: the same up to 1 level.
    `out`: a (size, size, 3) uint8 array to write into (the result is then a view of it).
    """
    crop = _crop_resize(image, box, size, scale_x, scale_y, out)
    if out is not None and crop.data_ptr() != out.ctypes.data:
        np.copyto(out, crop.permute(1, 2, 0).numpy())
        return torch.from_numpy(out).permute(2, 0, 1)
    return crop


def _crop_resize(
    image: np.ndarray, box: Box, size: int, scale_x: float, scale_y: float, out: np.ndarray | None
) -> torch.Tensor:
    h_img, w_img = image.shape[:2]
    x, y, w, h = box
    x0 = min(max(round(x * scale_x), 0), w_img - 1)
    y0 = min(max(round(y * scale_y), 0), h_img - 1)
    x1 = min(max(round((x + w) * scale_x), x0 + 1), w_img)
    y1 = min(max(round((y + h) * scale_y), y0 + 1), h_img)
    if y1 - y0 == size and x1 - x0 == size:  # a copy: `image` may be a reused decode buffer
        if out is not None:
            np.copyto(out, image[y0:y1, x0:x1])
            return torch.from_numpy(out).permute(2, 0, 1)
        return torch.from_numpy(image[y0:y1, x0:x1].copy()).permute(2, 0, 1)
    region = torch.from_numpy(image[y0:y1, x0:x1]).permute(2, 0, 1)  # CHW view, channels-last strides
    if max(x1 - x0, y1 - y0) <= _PLAIN_BILINEAR_UP_TO * size:
        # Upsampling or a mild downscale: antialiasing changes nothing that matters (the filter
        # support stays within 1.25 px), and OpenCV's fixed-point bilinear is twice as fast.
        resized = cv2.resize(image[y0:y1, x0:x1], (size, size), dst=out, interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(resized).permute(2, 0, 1)
    # A dense channels-last copy of the region is what torch's fast uint8 antialias kernel wants.
    region = region[None].contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(region, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0]  # channels-last strides: permute(1, 2, 0) is a free HWC view for Pillow


def decode_crops(
    data: bytes,
    boxes: Sequence[Box],
    size: int,
    width: int,
    height: int,
    outs: Sequence[np.ndarray | None] | None = None,
) -> list[torch.Tensor]:
    """Decode once and return one (3, size, size) uint8 crop per box (each its own memory).

    `width`/`height` are the stored image size the boxes refer to (from `jpeg_size`). `outs`: per box,
    a (size, size, 3) uint8 array to write the crop into, or None.
    """
    reduction = dct_reduction(boxes, size)
    image = decode_rgb(data, reduction, width, height, scratch=True)
    scale_x, scale_y = image.shape[1] / width, image.shape[0] / height
    outs = outs if outs is not None else [None] * len(boxes)
    return [crop_resize(image, b, size, scale_x, scale_y, o) for b, o in zip(boxes, outs, strict=True)]


def center_box(width: int, height: int) -> Box:
    """The square that torchvision's Resize(S) + CenterCrop(S) keeps, in stored-image pixels."""
    side = min(width, height)
    return ((width - side) / 2.0, (height - side) / 2.0, float(side), float(side))
