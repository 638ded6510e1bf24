"""JPEG bytes to a cropped, resized uint8 tensor, decoding no more pixels than the crop needs.

The crop box is chosen on the stored image size (read from the JPEG header) before decoding. The
decoder then downsizes in the DCT domain by the largest power of two (1/2, 1/4, 1/8) that keeps the
crop at least `size` pixels on both sides, so the final resize never upsamples more than the crop
itself asks for. A location's view used by two crops (a single-view location, or augment off) is
decoded once, at the scale the smaller crop allows. Stored views carry a restart marker every MCU row,
so only the rows the crops cover are decoded (`row_band`; the same pixels).

simplejpeg (libjpeg-turbo, fast integer DCT and upsampling) is the decoder; Pillow is the fallback for the
rare JPEG it refuses (CMYK, arithmetic coding). Both reject truncated data, so a corrupt view raises
`JpegError` instead of yielding a half-grey image.
"""

from __future__ import annotations

import io
import math
import re
import struct
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
#: Restart markers RST0..RST7; in entropy-coded data a 0xFF byte is always followed by 0x00.
_RST = re.compile(rb"\xff[\xd0-\xd7]")
_SOF_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential Huffman: one interleaved scan


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
    row_offset: int = 0,
) -> torch.Tensor:
    """Cut `box` (stored-image pixels, scaled by scale_x/y to `image`) and resize to (3, size, size) uint8
    with channels-last strides. `row_offset`: `image` starts at that (scaled) row of the stored image.

    Antialiased bilinear on uint8, as torchvision's RandomResizedCrop does; the channels-last view of
    the decoder's HWC array is the fast path of torch's uint8 resampler. Crops at most 1.25x the
    output size (upsampling, mild downscale) use OpenCV's plain bilinear: the same up to 1 level.
    `out`: a (size, size, 3) uint8 array to write into (the result is then a view of it).
    """
    crop = _crop_resize(image, box, size, scale_x, scale_y, out, row_offset)
    if out is not None and crop.data_ptr() != out.ctypes.data:
        np.copyto(out, crop.permute(1, 2, 0).numpy())
        return torch.from_numpy(out).permute(2, 0, 1)
    return crop


def _crop_resize(
    image: np.ndarray,
    box: Box,
    size: int,
    scale_x: float,
    scale_y: float,
    out: np.ndarray | None,
    row_offset: int = 0,
) -> torch.Tensor:
    h_img, w_img = image.shape[:2]
    x, y, w, h = box
    x0 = min(max(round(x * scale_x), 0), w_img - 1)
    y0 = min(max(round(y * scale_y) - row_offset, 0), h_img - 1)
    x1 = min(max(round((x + w) * scale_x), x0 + 1), w_img)
    y1 = min(max(round((y + h) * scale_y) - row_offset, y0 + 1), h_img)
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
    a (size, size, 3) uint8 array to write the crop into, or None. Only the rows the boxes need are
    decoded when the JPEG has restart markers at MCU-row boundaries (`row_band`); the crops are the
    same pixels as from the whole image.
    """
    reduction = dct_reduction(boxes, size)
    top = min(b[1] for b in boxes)
    band = row_band(data, top, max(b[1] + b[3] for b in boxes) + reduction + 1)  # + rounding at 1/r
    start, band_h = 0, height
    if band is not None:
        data, start, band_h = band
    image = decode_rgb(data, reduction, width, band_h, scratch=True)
    # the whole image's decoded scale, so that a band's crops land on the same pixels as the whole's
    scale_x = math.ceil(width / reduction) / width if band is not None else image.shape[1] / width
    scale_y = math.ceil(height / reduction) / height if band is not None else image.shape[0] / height
    offset = start // reduction  # a band starts on an MCU row: a whole number of decoded rows
    outs = outs if outs is not None else [None] * len(boxes)
    return [
        crop_resize(image, b, size, scale_x, scale_y, o, offset) for b, o in zip(boxes, outs, strict=True)
    ]


def row_band(data: bytes, y0: float, y1: float) -> tuple[bytearray, int, int] | None:
    """Stored rows y0..y1 of a sequential JPEG as a smaller JPEG: (bytes, first row, rows), or None.

    Why: decoding is mostly Huffman decoding, which scales with the bytes, not the output size, so DCT
    scaling saves little (1/2: about 11% on 448 px views); a MoCo crop covers about 72% of a whole
    view's rows. A JPEG written with a restart marker every MCU row (write-shards does) restarts its
    entropy coding at each row of MCUs, so those rows can be cut out: the header with the new height,
    the kept intervals with their markers renumbered from 0, EOI. libjpeg decodes each MCU row alone
    (with the fast upsampling decode_rgb uses), so the band's pixels equal the whole image's.
    None (decode the whole image) when there are no such markers, when the band is the whole image, or
    when the data does not end in EOI (truncated: the whole decode reports it).
    """
    head = _sequential_header(data)
    if head is None or not data.endswith(b"\xff\xd9"):
        return None
    scan, sof_at, height, band = head
    first, last = max(0, int(y0) // band), min(-(-height // band), -(-math.ceil(y1) // band))
    if (first == 0 and last * band >= height) or last <= first:
        return None
    intervals = -(-height // band)
    starts = [scan]  # where each kept interval's entropy data starts, up to the band's end
    for k in range(min(last, intervals - 1)):
        found = _RST.search(data, starts[-1])  # faster than bytes.find over the many stuffed 0xFF 0x00
        if found is None or data[found.start() + 1] != 0xD0 + k % 8:
            return None  # missing or out of sequence: corrupt, let the whole decode report it
        starts.append(found.end())
    end = starts[last] - 2 if last < intervals else len(data) - 2
    rows = min(height, last * band) - first * band
    view = memoryview(data)
    out = bytearray(view[:scan])
    out[sof_at : sof_at + 2] = struct.pack(">H", rows)
    shift = starts[first] - len(out)
    out += view[starts[first] : end]
    for n, k in enumerate(range(first + 1, last)):  # renumber the kept markers from RST0
        out[starts[k] - 1 - shift] = 0xD0 + n % 8
    out += b"\xff\xd9"
    return out, first * band, rows


def _sequential_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(entropy data start, offset of the SOF height, image height, rows per restart interval) of a
    single-scan sequential JPEG with restart intervals of whole MCU rows; None otherwise."""
    i, restart, sof = 2, 0, None
    try:
        while True:
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            length = struct.unpack_from(">H", data, i + 2)[0]
            if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return None  # progressive, lossless, hierarchical or arithmetic coding
            if marker in _SOF_SEQUENTIAL:
                height, width, ncomp = struct.unpack_from(">HHB", data, i + 5)
                factors = data[i + 11 : i + 11 + 3 * ncomp : 3]
                sof = (
                    i + 5,
                    height,
                    width,
                    ncomp,
                    8 * max(f >> 4 for f in factors),
                    8 * max(f & 15 for f in factors),
                )
            elif marker == 0xDD:
                restart = struct.unpack_from(">H", data, i + 4)[0]
            elif marker == 0xDA:
                if sof is None or not restart or data[i + 4] != sof[3] or sof[1] == 0:
                    return None  # no restart markers, a non-interleaved scan, or a DNL height
                sof_at, height, width, ncomp, mcu_w, mcu_h = sof
                if ncomp == 1:  # a single-component scan's MCU is one block, whatever its sampling
                    mcu_w = mcu_h = 8
                per_row = -(-width // mcu_w)
                if restart % per_row:
                    return None
                return i + 2 + length, sof_at, height, mcu_h * (restart // per_row)
            i += 2 + length
    except (IndexError, struct.error, ValueError):
        return None


def center_box(width: int, height: int) -> Box:
    """The square that torchvision's Resize(S) + CenterCrop(S) keeps, in stored-image pixels."""
    side = min(width, height)
    return ((width - side) / 2.0, (height - side) / 2.0, float(side), float(side))
