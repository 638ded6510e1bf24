"""MoCo-v2 augmentation ("aug-plus") and the evaluation transform on the CPU, near the JPEG decode limit.

The recipe is MoCo-v2's (facebookresearch/moco, main_moco.py --aug-plus), drawn independently per view:
RandomResizedCrop(S, scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale p=0.2,
Gaussian blur with sigma ~ U(0.1, 2) p=0.5 (pixels of a 224 px crop, scaled with the crop size), horizontal flip p=0.5, ImageNet normalisation, in that order.
MoCo's blur is Pillow's `GaussianBlur(radius=sigma)` (radius is the standard deviation there), not
torchvision's `GaussianBlur`; ours is a true Gaussian of that sigma (radius ceil(3 sigma), mirrored
border), within about 0.6 of a level of Pillow's three-box approximation.

How it is made fast without changing the distribution:

- Parameters are drawn first (`MocoV2Augment.sample`) on the stored image size from the JPEG header, so
  the decoder can downsize in the DCT domain and crop + resize happen once (geo_ssl.training.data.decode).
- Every per-view op runs on the 8-bit S x S crop with OpenCV, single-threaded (`augment_crop`), in
  torchvision's order, with torchvision's semantics: the four ColorJitter ops in the view's random
  permutation (brightness and contrast as one scale-and-offset pass, saturation as a blend with the
  per-pixel luma, hue as a rotation of the HSV hue: the same HSV model as torchvision, on 8-bit HSV), each
  rounded and clamped to 0..255 as torchvision does between ops; then grayscale, then the Gaussian blur
  as a separable filter, then the flip. tests/training/data/test_augment.py pins every op within
  2 levels of torchvision.transforms.v2.functional on the same parameters.
- `finish_views` only normalises: one lookup-table pass per channel from uint8 straight into the
  caller's (preallocated) float batch, no float temporaries.
- Or the batch stays 8-bit (`uint8_batch`, channels-last, a quarter of the bytes): each op takes a `dst`,
  so a view's last op (`augment_crop(..., out=slot)`, or the resize when nothing follows) writes straight
  into its slot, and `normalize_batch` normalises the batch where it is consumed, e.g. on the GPU after
  the transfer (as FFCV does): the same values as `finish_views` within 4e-7 (bit-identical on the CPU).

`torchvision_mocov2` is the plain torchvision/PIL pipeline with the same parameters, used as the
baseline of the benchmarks and as the reference in tests. geo_ssl.training.data.gpu_augment is the same
distribution, batched on a torch device.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter

from geo_ssl.training.data.decode import Box, center_box

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL convert("L"), torchvision and OpenCV use
_LEVELS = np.arange(256, dtype=np.float64)
_LUMA_ROWS = np.outer(np.ones(3), _LUMA)  # every output channel = the luma

cv2.setNumThreads(1)  # one loader worker = one core; OpenCV's own pool would oversubscribe
cv2.setUseOptimized(True)


@dataclass(frozen=True)
class ViewParams:
    """Everything random about one augmented view, drawn before its JPEG is decoded."""

    box: Box  # x, y, w, h in stored-image pixels
    flip: bool = False
    blur_sigma: float = 0.0  # 0: no blur
    jitter: tuple[tuple[str, float], ...] = ()  # (op, factor) in the order applied; () = no jitter
    gray: bool = False


@dataclass(frozen=True)
class MocoV2Augment:
    """MoCo-v2 augmentation parameters; `sample` draws one view's randomness from `rng`."""

    image_size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p_jitter: float = 0.8
    p_gray: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    p_blur: float = 0.5
    p_flip: float = 0.5
    #: blur_sigma is in pixels of a crop this size (MoCo-v2's 224) and scales with image_size, so a 64 px
    #: crop is blurred as much relative to its size as a 224 px one (unscaled, sigma 2 on 64 px is 3.5x
    #: stronger and held the ablation's MoCo below random init; BENCHMARKS.md). 0 = never scale.
    blur_reference: int = 224

    def sample(self, rng: random.Random, width: int, height: int) -> ViewParams:
        box = random_resized_crop_box(rng, width, height, self.scale, self.ratio)
        jitter: tuple[tuple[str, float], ...] = ()
        if rng.random() < self.p_jitter:
            ops = [
                ("brightness", rng.uniform(1 - self.brightness, 1 + self.brightness)),
                ("contrast", rng.uniform(1 - self.contrast, 1 + self.contrast)),
                ("saturation", rng.uniform(1 - self.saturation, 1 + self.saturation)),
                ("hue", rng.uniform(-self.hue, self.hue)),
            ]
            rng.shuffle(ops)
            jitter = tuple(ops)
        gray = rng.random() < self.p_gray
        sigma = rng.uniform(*self.blur_sigma) if rng.random() < self.p_blur else 0.0
        if self.blur_reference and self.image_size != self.blur_reference:
            sigma *= self.image_size / self.blur_reference
        flip = rng.random() < self.p_flip
        return ViewParams(box=box, flip=flip, blur_sigma=sigma, jitter=jitter, gray=gray)


def eval_params(width: int, height: int) -> ViewParams:
    """No augmentation: the Resize(S) + CenterCrop(S) square, then normalisation only."""
    return ViewParams(box=center_box(width, height))


def random_resized_crop_box(
    rng: random.Random, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> Box:
    """torchvision's RandomResizedCrop.get_params, drawn from `rng`; returns (x, y, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return (float(rng.randint(0, width - w)), float(rng.randint(0, height - h)), float(w), float(h))
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return ((width - w) / 2.0, (height - h) / 2.0, float(w), float(h))


# Every op below takes an optional `dst`: an HxWx3 uint8 array (not `img`) to write the result into, so
# that a view's last op writes straight into its slot of the output batch.


def _affine(img: np.ndarray, factor: float, offset: float, dst: np.ndarray | None = None) -> np.ndarray:
    """factor * v + offset on every channel, rounded and clamped to 0..255 (one pass; an OpenCV colour
    transform is about twice as fast as a 256-entry lookup table on 3-channel pixels)."""
    mat = np.zeros((3, 4), dtype=np.float32)
    mat[0, 0] = mat[1, 1] = mat[2, 2] = factor
    mat[:, 3] = offset
    return cv2.transform(img, mat, dst=dst)


def adjust_brightness(img: np.ndarray, factor: float, dst: np.ndarray | None = None) -> np.ndarray:
    """torchvision's adjust_brightness on an HxWx3 uint8 array: blend with black, rounded and clamped."""
    return _affine(img, factor, 0.0, dst)


def adjust_contrast(img: np.ndarray, factor: float, dst: np.ndarray | None = None) -> np.ndarray:
    """torchvision's adjust_contrast: blend with the mean of the image's luma."""
    mean_rgb = cv2.mean(img)[:3]
    grey = sum(w * m for w, m in zip(_LUMA, mean_rgb, strict=True))
    return _affine(img, factor, (1.0 - factor) * grey, dst)


def adjust_saturation(img: np.ndarray, factor: float, dst: np.ndarray | None = None) -> np.ndarray:
    """torchvision's adjust_saturation: blend with the per-pixel luma, as one 3x3 colour matrix pass."""
    mat = (1.0 - factor) * _LUMA_ROWS
    mat[0, 0] += factor
    mat[1, 1] += factor
    mat[2, 2] += factor
    return cv2.transform(img, mat.astype(np.float32), dst=dst)


def adjust_hue(img: np.ndarray, factor: float, dst: np.ndarray | None = None) -> np.ndarray:
    """torchvision's adjust_hue: rotate the HSV hue by `factor` turns (8-bit HSV, 256 hue steps)."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    h, w = hsv.shape[:2]
    rows = hsv.reshape(h, w * 3)  # (h, s, v) triplets per row: adding (shift, 0, 0) row-wise is dense
    np.add(rows, _hue_row(round(factor * 256) % 256, w), out=rows)  # uint8: wraps mod 256
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL, dst=dst)


@functools.lru_cache(maxsize=1024)
def _hue_row(shift: int, width: int) -> np.ndarray:
    """One image row of (shift, 0, 0) triplets (4x faster than a strided add on the hue plane)."""
    row = np.zeros((width, 3), dtype=np.uint8)
    row[:, 0] = shift
    return row.reshape(-1)


def grayscale(img: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
    """RandomGrayscale's output: luma replicated to 3 channels."""
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB, dst=dst)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """1-D Gaussian of standard deviation `sigma`, radius ceil(3 sigma), summing to 1 (float32)."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float, dst: np.ndarray | None = None) -> np.ndarray:
    """MoCo's Pillow GaussianBlur(radius=sigma), as a separable true Gaussian on the uint8 crop."""
    k = gaussian_kernel(sigma)
    return cv2.sepFilter2D(img, -1, k, k, dst=dst, borderType=cv2.BORDER_REFLECT_101)


def _flip(img: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
    return cv2.flip(img, 1, dst=dst)


_ADJUST = {
    "brightness": adjust_brightness,
    "contrast": adjust_contrast,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
}


def augment_crop(crop: torch.Tensor, params: ViewParams, out: np.ndarray | None = None) -> torch.Tensor:
    """Colour jitter, grayscale, blur and flip of one (3, S, S) uint8 crop, on its 8-bit pixels.

    Returns (3, S, S) uint8 with channels-last strides (a free view of an S x S x 3 array), in
    torchvision's order and semantics; normalisation is left to `finish_views` on the batch. `out`: an
    S x S x 3 uint8 array (not the crop's memory) that receives the result, written by the last op
    directly (a slot of the loader's uint8 batch); the result is then a view of it.
    """
    steps: list[tuple] = []
    for op, factor in params.jitter:
        try:
            steps.append((_ADJUST[op], factor))
        except KeyError:
            raise ValueError(f"unknown colour op {op!r}") from None
    if params.gray:
        steps.append((grayscale,))
    if params.blur_sigma > 0:
        steps.append((gaussian_blur, params.blur_sigma))
    if params.flip:
        steps.append((_flip,))
    if not steps and out is None:
        return crop
    img = np.ascontiguousarray(crop.permute(1, 2, 0).numpy())  # no copy for channels-last crops
    for k, (fn, *args) in enumerate(steps):
        img = fn(img, *args, dst=out if k == len(steps) - 1 else None)
    if out is not None and img is not out:  # no op, or OpenCV did not write into `out`
        np.copyto(out, img)
        img = out
    return torch.from_numpy(img).permute(2, 0, 1)


#: The name geo_ssl.training.data.selection calls; the whole per-view augmentation now runs there.
spatial = augment_crop


def _norm_luts() -> list[np.ndarray]:
    """Per channel: uint8 level -> normalised float32 ((v / 255 - mean) / std)."""
    return [
        ((_LEVELS / 255.0 - m) / s).astype(np.float32)
        for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ]


_NORM_LUTS = _norm_luts()


def finish_views(
    crops: torch.Tensor | Sequence[torch.Tensor],
    params: Sequence[ViewParams] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """ImageNet normalisation of augmented uint8 crops into a float32 (n, 3, S, S) batch.

    `crops`: a (n, 3, S, S) uint8 tensor, or a list of (3, S, S) uint8 crops as `augment_crop` returns
    them (then nothing is stacked: each crop's pixels go straight into its slot of `out`). Colour, blur
    and flip are already applied; `params` is accepted for the callers' convenience and not used.
    Writes into `out` when given (reuse it across batches, see `BatchBuffers`): one 256-entry lookup per
    pixel and channel, no float temporaries.
    """
    del params
    if isinstance(crops, torch.Tensor):
        if crops.dim() != 4:
            raise ValueError(f"expected (n, 3, S, S) uint8 crops, got shape {tuple(crops.shape)}")
        views = list(crops.unbind(0))
    else:
        views = list(crops)
    if not views or any(v.dtype != torch.uint8 or v.dim() != 3 or v.shape[0] != 3 for v in views):
        raise ValueError("expected (3, S, S) uint8 crops")
    n, (c, h, w) = len(views), views[0].shape
    if out is None:
        out = torch.empty((n, c, h, w), dtype=torch.float32)
    if tuple(out.shape) != (n, c, h, w) or out.dtype != torch.float32:
        raise ValueError(f"out must be float32 {(n, c, h, w)}, got {out.dtype} {tuple(out.shape)}")
    dst = out.numpy()
    dense = out.is_contiguous()
    for i, view in enumerate(views):
        hwc = view.permute(1, 2, 0).numpy()  # a free view for channels-last crops
        rows_dense = hwc.strides[1:] == (3, 1)  # a crop of a wider image (a ROI) is fine for OpenCV
        planes = cv2.split(hwc) if rows_dense else [np.ascontiguousarray(p) for p in view.numpy()]
        for ch in range(3):
            if dense:
                cv2.LUT(planes[ch], _NORM_LUTS[ch], dst=dst[i, ch])
            else:
                dst[i, ch] = _NORM_LUTS[ch][planes[ch]]
    return out


def uint8_batch(shape: Sequence[int], buffers: BatchBuffers | None = None) -> torch.Tensor:
    """A (..., 3, S, S) uint8 batch whose memory is laid out (..., S, S, 3): channels-last strides."""
    *lead, c, h, w = (int(s) for s in shape)
    phys = (*lead, h, w, c)
    buf = buffers.get(phys, torch.uint8) if buffers is not None else torch.empty(phys, dtype=torch.uint8)
    nd = len(phys)
    return buf.permute(*range(nd - 3), nd - 1, nd - 3, nd - 2)


_AFFINE: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _norm_affine(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(device), dtype)
    if key not in _AFFINE:
        scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
        shift = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
        _AFFINE[key] = tuple(  # type: ignore[assignment]
            torch.tensor(v, dtype=dtype).view(3, 1, 1).to(device) for v in (scale, shift)
        )
    return _AFFINE[key]


def normalize_batch(
    images: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """ImageNet normalisation of a uint8 (..., 3, S, S) batch on its own device, in `dtype`.

    What the trainer does with the loader's `output="uint8"` batches after moving them to the GPU (a
    quarter of the bytes of a float batch): x * (1 / (255 std)) - mean / std in one multiply and one
    add, equal to `finish_views` within 4e-7. A contiguous float32 result on the CPU is `finish_views`
    itself (the same lookup tables, bit-identical, and faster there than the arithmetic).
    """
    if images.dtype != torch.uint8 or images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected a uint8 (..., 3, S, S) batch, got {images.dtype} {tuple(images.shape)}")
    if images.device.type == "cpu" and dtype == torch.float32 and memory_format == torch.contiguous_format:
        flat = images.reshape(-1, *images.shape[-3:])
        out = torch.empty(flat.shape, dtype=torch.float32)
        return finish_views(flat, out=out).view(images.shape)
    scale, shift = _norm_affine(images.device, dtype)
    if images.dim() != 4 and memory_format != torch.preserve_format:
        memory_format = torch.contiguous_format  # channels_last is defined for 4-D tensors only
    out = torch.empty_like(images, dtype=dtype, memory_format=memory_format)
    torch.mul(images, scale, out=out)
    return out.add_(shift)


class BatchBuffers:
    """Output batches reused across steps, so the normalised batch is written into warm pages.

    A fresh 38 MB float batch per step costs about as much in page faults as normalising it. `get`
    hands back the previous buffer of that shape once nobody else holds it (no tensor or view of it is
    alive outside the pool), else a new one. In a DataLoader worker a batch leaves through shared
    memory and the main process may still read it, so there `get` returns a fresh tensor that is
    already in shared memory (sent without a second copy).
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep  # buffers kept per shape: the consumer may still hold the previous batch or two
        self._pool: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}

    def get(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if torch.utils.data.get_worker_info() is not None:
            return _shared_empty(shape, dtype)
        pool = self._pool.setdefault((shape, dtype), [])
        for buf in pool:
            if not buf.is_shared() and _only_pool_holds(buf):
                return buf.view(shape)  # callers only ever hold views: the storage's use count tells
        buf = torch.empty(shape, dtype=dtype)
        pool.append(buf)
        if len(pool) > self.keep:
            pool.pop(0)
        return buf.view(shape)


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor allocated in shared memory directly (share_memory_() would copy a fresh one)."""
    try:
        nbytes = torch.empty(0, dtype=dtype).element_size() * math.prod(shape)
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    except (AttributeError, RuntimeError, TypeError):  # private API changed: the public, slower way
        return torch.empty(shape, dtype=dtype).share_memory_()


def _only_pool_holds(buf: torch.Tensor) -> bool:
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # private API gone: never reuse, always correct
        return False
    storage = buf.untyped_storage()
    return use_count(storage._cdata) <= 2  # the pool's tensor + the `storage` object here


def torchvision_mocov2(image_size: int = 224, scale: tuple[float, float] = (0.2, 1.0)):
    """The textbook MoCo-v2 pipeline on PIL images with torchvision ops (benchmark baseline, reference)."""
    from torchvision import transforms as T

    class _PilGaussianBlur:
        def __init__(self, sigma: tuple[float, float]):
            self.sigma = sigma

        def __call__(self, img: Image.Image) -> Image.Image:
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=scale),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([_PilGaussianBlur((0.1, 2.0))], p=0.5),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
