"""MoCo-v2 augmentation ("aug-plus") and the evaluation transform, fast enough to feed a GPU from few cores.

The recipe is MoCo-v2's, drawn independently per view: RandomResizedCrop(S, scale=(0.2, 1)),
ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 (the four ops in random order), RandomGrayscale p=0.2,
Gaussian blur with sigma ~ U(0.1, 2) p=0.5 (Pillow's GaussianBlur(radius=sigma), as MoCo does),
horizontal flip p=0.5, ImageNet normalisation.

How it is made fast, and where it differs from torchvision's PIL pipeline:

- Parameters are drawn first (`MocoV2Augment.sample`) on the stored image size from the JPEG header,
  so the decoder can downsize in the DCT domain and crop + resize happen once (geo_ssl.training.data.decode).
- Brightness, contrast, saturation and hue are affine maps of RGB, so the jitter, the grayscale and the
  normalisation are folded into one 3x3 matrix plus offset per view and applied to the whole batch with
  one batched matmul (`finish_views`). Hue is a rotation of the chroma plane in YIQ space, as NVIDIA
  DALI's hue/ColorTwist does, instead of torchvision's HSV round trip (5 ms per 224 px view here);
  values are clamped once at the end instead of after each op. Both change single pixel values by a
  few levels at most for typical factors; tests/test_augment.py pins the agreement with torchvision.
- Blur and flip run before the colour map (both are linear in the pixels, so the order only matters
  through the clamp).

`torchvision_mocov2` is the plain torchvision/PIL pipeline with the same parameters, used as the
baseline of the benchmarks and as the reference in tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from geo_ssl.training.data.decode import Box, center_box

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL convert("L") and torchvision use
_TO_GRAY = np.outer(np.ones(3), _LUMA)
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
_CHUNK = 32  # views per batched matmul; bounds the float temporaries


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


def spatial(crop: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """Flip and blur one (3, S, S) uint8 crop; returns (3, S, S) uint8 (any strides)."""
    if params.blur_sigma > 0:
        hwc = np.ascontiguousarray(crop.permute(1, 2, 0).numpy())  # no copy for channels-last crops
        blurred = Image.fromarray(hwc).filter(ImageFilter.GaussianBlur(radius=params.blur_sigma))
        crop = torch.from_numpy(np.array(blurred)).permute(2, 0, 1)
    if params.flip:
        crop = crop.flip(-1)
    return crop


def color_affine(params: ViewParams, mean_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A, a) so that the jittered, maybe grey pixel is A @ rgb + a (0..255 scale, before clamping).

    `mean_rgb` is the view's mean colour; contrast blends towards the mean grey of the image it is
    applied to, which after earlier ops is luma(A @ mean_rgb + a).
    """
    a_mat = np.eye(3)
    a_vec = np.zeros(3)
    for op, f in params.jitter:
        if op == "brightness":
            a_mat, a_vec = f * a_mat, f * a_vec
        elif op == "contrast":
            grey = float(_LUMA @ (a_mat @ mean_rgb + a_vec))
            a_mat, a_vec = f * a_mat, f * a_vec + (1 - f) * grey
        elif op == "saturation":
            s = f * np.eye(3) + (1 - f) * _TO_GRAY
            a_mat, a_vec = s @ a_mat, s @ a_vec
        elif op == "hue":
            c, s = math.cos(2 * math.pi * f), math.sin(2 * math.pi * f)
            rot = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
            h = _YIQ_INV @ rot @ _YIQ
            a_mat, a_vec = h @ a_mat, h @ a_vec
        else:
            raise ValueError(f"unknown colour op {op!r}")
    if params.gray:
        a_mat, a_vec = _TO_GRAY @ a_mat, _TO_GRAY @ a_vec
    return a_mat, a_vec


def _norm_consts(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    return (1.0 / (255.0 * std)).to(dtype), (mean / std).to(dtype)


def finish_views(
    crops: torch.Tensor, params: Sequence[ViewParams], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Colour jitter, grayscale, clamp and ImageNet normalisation for a batch of uint8 crops.

    crops: (n, 3, S, S) uint8 (already flipped/blurred); returns (n, 3, S, S) float32, written to
    `out` when given. One batched matmul per chunk does all colour ops of every view at once.
    """
    n, c, h, w = crops.shape
    if out is None:
        out = torch.empty((n, c, h, w), dtype=torch.float32)
    scale, shift = _norm_consts()
    # Per-channel clamp bounds of the normalised range; scalar clamps are 10x faster than tensor bounds.
    bounds = [(float(-shift[c]), float(255.0 * scale[c] - shift[c])) for c in range(3)]
    flat_out = out.view(n, c, h * w)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        chunk_params = params[start:stop]
        if not any(p.jitter or p.gray for p in chunk_params):
            # Normalisation only: per channel, straight from uint8 into the output (no float temporary).
            for ch in range(3):
                o = flat_out[start:stop, ch]
                o.copy_(crops[start:stop, ch].reshape(stop - start, h * w))
                o.mul_(float(scale[ch])).sub_(float(shift[ch]))
            continue
        x = crops[start:stop].reshape(stop - start, c, h * w).float()
        need_mean = any(op == "contrast" for p in chunk_params for op, _ in p.jitter)
        means = x.mean(-1).double().numpy() if need_mean else np.zeros((stop - start, 3))
        mats = np.empty((stop - start, 3, 3))
        vecs = np.empty((stop - start, 3))
        for i, p in enumerate(chunk_params):
            mats[i], vecs[i] = color_affine(p, means[i])
        # Fold the normalisation in: diag(scale) @ (A x + a) - shift.
        s = scale.double().numpy()
        mats = mats * s[None, :, None]
        vecs = vecs * s[None, :] - shift.double().numpy()[None, :]
        torch.baddbmm(
            torch.from_numpy(vecs).float()[:, :, None],
            torch.from_numpy(mats).float(),
            x,
            out=flat_out[start:stop],
        )
        for ch, (lo, hi) in enumerate(bounds):
            flat_out[start:stop, ch].clamp_(lo, hi)
    return out


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
