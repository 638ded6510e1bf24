"""MoCo-v2 augmentation batched on a torch device (the GPU data path); the same code runs on CPU tensors.

The CPU side only reads and selects JPEG bytes (`LoaderConfig(decode="defer")`); this module decodes
them on the device (`torchvision.io.decode_jpeg`, nvJPEG on CUDA, one batched call) and applies the
MoCo-v2 recipe to the whole batch with per-sample random parameters:

- the parameters are drawn by the very sampler of the CPU path (`MocoV2Augment.sample`: crop box,
  jitter factors and their random order, grayscale, blur sigma, flip), one view at a time, so both paths
  draw from one distribution by construction;
- crop + resize: `torchvision.ops.roi_align` per group of same-sized images (adaptive sampling ratio:
  each output pixel averages ceil(box / S)^2 bilinear samples, the antialiasing of a downscale);
- colour jitter vectorised: for each of the four positions of the random order, every op is applied to
  the samples that have it there, with their own factors (torchvision's float semantics, clamped after
  each op; hue through HSV, as torchvision);
- grayscale, then the Gaussian blur as a per-sample separable depthwise convolution (the CPU path's
  kernel: radius ceil(3 sigma), mirrored border), flip, ImageNet normalisation, channels-last output.

`GpuAugment.pairs(batch)` turns a deferred pretrain batch into the usual {"q", "k", ...} dict on the
device; `device_batches(loader, ...)` does it for a whole epoch, preparing the next batch on a side
CUDA stream in a background thread while the current one trains.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import queue
import random
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from geo_ssl.training.data.augment import IMAGENET_MEAN, IMAGENET_STD, MocoV2Augment, ViewParams, eval_params
from geo_ssl.training.data.selection import seed_of

_LUMA = (0.299, 0.587, 0.114)
_OPS = ("brightness", "contrast", "saturation", "hue")
_MAX_SIGMA_RADIUS = 6  # ceil(3 * 2.0): MoCo-v2's largest sigma at 224 px; gaussian_blur sizes to the batch's


# ------------------------------------------------------------------------------------------- decode


def decode_jpegs(blobs: Sequence[bytes], device: torch.device | str) -> dict[str, Any]:
    """Decode JPEG bytes to (3, H, W) uint8 tensors on `device`; one batched nvJPEG call on CUDA.

    Returns {"images": list (None where undecodable), "bad": indices of undecodable blobs}. A batched
    call fails as a whole on one bad JPEG; then each blob is decoded alone to find it.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 flags its image decoders as deprecated
        try:
            images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
            return {"images": list(images), "bad": []}
        except Exception:
            pass
        out: list[torch.Tensor | None] = []
        bad = []
        for i, d in enumerate(datas):
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except Exception:
                out.append(None)
                bad.append(i)
    return {"images": out, "bad": bad}


# ------------------------------------------------------------------------------------------- params


def sample_params(
    aug: MocoV2Augment | None, rng: random.Random, sizes: Sequence[tuple[int, int]]
) -> list[ViewParams]:
    """One view's parameters per (width, height), drawn by the CPU path's sampler; eval crop if aug is None."""
    if aug is None:
        return [eval_params(w, h) for w, h in sizes]
    return [aug.sample(rng, w, h) for w, h in sizes]


def params_tensors(params: Sequence[ViewParams], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The per-sample parameters as tensors: boxes (n, 4) x1 y1 x2 y2, factors (n, 4) in _OPS order
    (identity where not jittered), order (n, 4) op index at each position, gray, flip (n,) bool, sigma (n,)."""
    n = len(params)
    boxes = torch.tensor(
        [[x, y, x + w, y + h] for x, y, w, h in (p.box for p in params)], dtype=torch.float32
    )
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * n, dtype=torch.float32).reshape(n, 4)
    order = torch.full((n, 4), -1, dtype=torch.int64)
    for i, p in enumerate(params):
        for pos, (op, f) in enumerate(p.jitter):
            j = _OPS.index(op)
            factors[i, j] = f
            order[i, pos] = j
    return {
        "boxes": boxes.to(device),
        "factors": factors.to(device),
        "order": order.to(device),
        "gray": torch.tensor([p.gray for p in params], dtype=torch.bool, device=device),
        "flip": torch.tensor([p.flip for p in params], dtype=torch.bool, device=device),
        "sigma": torch.tensor([p.blur_sigma for p in params], dtype=torch.float32, device=device),
    }


# ---------------------------------------------------------------------------------------- pixel ops


def crop_resize(images: Sequence[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 3, size, size) float in [0, 1]: box i of images[i], antialiased by roi_align's adaptive sampling."""
    from torchvision.ops import roi_align

    n = len(images)
    device = boxes.device
    out = torch.empty((n, 3, size, size), dtype=torch.float32, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    for idx in groups.values():
        stack = torch.stack([images[i] for i in idx]).float().div_(255.0)
        index = torch.tensor(idx, device=device)
        rois = torch.cat(
            [torch.arange(len(idx), device=device, dtype=torch.float32)[:, None], boxes[index]], 1
        )
        out[index] = roi_align(
            stack, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
    return out.clamp_(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) RGB in [0, 1] to HSV, all three in [0, 1] (hue in turns), as colorsys defines it."""
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(1)
    minc = x.min(1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        argmax == 0,
        ((g - b) / safe) % 6.0,
        torch.where(argmax == 1, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h)) % 1.0
    s = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`: channel c = V - V S clamp(min(k, 4 - k), 0, 1), k = (n_c + 6 H) mod 6."""
    h, s, v = x.unbind(1)
    chans = []
    for n in (5.0, 3.0, 1.0):
        k = (n + 6.0 * h) % 6.0
        chans.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(chans, 1)


def _apply_op(x: torch.Tensor, op: int, f: torch.Tensor) -> torch.Tensor:
    f4 = f.view(-1, 1, 1, 1)
    if op == 0:  # brightness: blend with black
        return (x * f4).clamp_(0.0, 1.0)
    if op == 1:  # contrast: blend with the mean luma of the image
        mean = _gray(x).mean((1, 2, 3), keepdim=True)
        return (f4 * x + (1.0 - f4) * mean).clamp_(0.0, 1.0)
    if op == 2:  # saturation: blend with the per-pixel luma
        return (f4 * x + (1.0 - f4) * _gray(x)).clamp_(0.0, 1.0)
    hsv = rgb_to_hsv(x)  # hue: rotate the HSV hue by f turns
    hsv[:, 0] = (hsv[:, 0] + f.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(hsv).clamp_(0.0, 1.0)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Per-sample ColorJitter: position by position, each op on the samples that have it there."""
    for pos in range(4):
        for op in range(4):
            idx = (order[:, pos] == op).nonzero().flatten()
            if idx.numel():
                x[idx] = _apply_op(x[idx], op, factors[idx, op])
    return x


def gaussian_kernels(sigma: torch.Tensor, radius: int = _MAX_SIGMA_RADIUS) -> torch.Tensor:
    """(n, 2 radius + 1) 1-D Gaussians, each cut at its own radius ceil(3 sigma) (as the CPU path) and
    normalised; zero-padded to the common width."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    own = torch.ceil(3.0 * s).clamp_min(1.0)
    k = torch.where(x[None].abs() <= own, k, torch.zeros_like(k))
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur sample i with sigma[i]: a separable depthwise convolution over the batch, mirrored border."""
    n, c, h, w = x.shape
    radius = min(max(1, math.ceil(3.0 * float(sigma.max()))), h - 1, w - 1)  # sigma scales with the crop
    k = gaussian_kernels(sigma, radius).repeat_interleave(c, 0)  # (n * c, K)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def augment_batch(
    images: Sequence[torch.Tensor],
    params: Sequence[ViewParams],
    size: int,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The MoCo-v2 views of `images` ((3, H, W) uint8, one per view) under `params`: normalised (n, 3, S, S)."""
    if len(images) != len(params):
        raise ValueError(f"{len(images)} images but {len(params)} parameter sets")
    device = images[0].device
    p = params_tensors(params, device)
    x = crop_resize(images, p["boxes"], size)
    if bool((p["order"] >= 0).any()):
        x = color_jitter(x, p["factors"], p["order"])
    gray = p["gray"].nonzero().flatten()
    if gray.numel():
        x[gray] = _gray(x[gray]).expand(-1, 3, -1, -1)
    blur = (p["sigma"] > 0).nonzero().flatten()
    if blur.numel():
        x[blur] = gaussian_blur(x[blur], p["sigma"][blur]).clamp_(0.0, 1.0)
    flip = p["flip"].nonzero().flatten()
    if flip.numel():
        x[flip] = x[flip].flip(-1)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(dtype)


# ----------------------------------------------------------------------------------------- batches


class GpuAugment:
    """Deferred loader batches (JPEG bytes) to augmented views on `device`, with per-view parameters."""

    def __init__(
        self,
        image_size: int = 224,
        device: torch.device | str | None = None,
        augment: bool = True,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.image_size = image_size
        self.aug = MocoV2Augment(image_size=image_size) if augment else None
        self.channels_last, self.dtype = channels_last, dtype
        self.stats = {"views": 0, "undecodable": 0, "refilled": 0}

    def views(self, blobs: Sequence[bytes], rng: random.Random) -> dict[str, Any]:
        """{"views": (n, 3, S, S), "params": list[ViewParams], "bad": indices that were undecodable}."""
        dec = decode_jpegs(blobs, self.device)
        good = [i for i, img in enumerate(dec["images"]) if img is not None]
        images = dec["images"]
        if dec["bad"]:
            if not good:
                raise ValueError(f"none of {len(blobs)} JPEGs in the batch is decodable")
            images = [img if img is not None else images[good[i % len(good)]] for i, img in enumerate(images)]
        sizes = [(int(img.shape[-1]), int(img.shape[-2])) for img in images]
        params = sample_params(self.aug, rng, sizes)
        out = augment_batch(images, params, self.image_size, self.channels_last, self.dtype)
        self.stats["views"] += len(blobs)
        self.stats["undecodable"] += len(dec["bad"])
        return {"views": out, "params": params, "bad": dec["bad"]}

    def pairs(self, batch: dict, seed: int = 0) -> dict[str, Any]:
        """A `decode="defer"` pretrain batch to {"q", "k", "geo_cluster", "category", "key"} on the device.

        A location whose q or k JPEG is undecodable is replaced by another location of the same batch
        (counted in stats["refilled"]), so the batch keeps its size, as the CPU loader does.
        """
        q_jpeg, k_jpeg = list(batch["q_jpeg"]), list(batch["k_jpeg"])
        b = len(q_jpeg)
        res = self.views(q_jpeg + k_jpeg, random.Random(seed))
        views = res["views"]
        geo, category, keys = batch["geo_cluster"], batch["category"], list(batch["key"])
        bad = sorted({i % b for i in res["bad"]})
        if bad:
            good = [i for i in range(b) if i not in set(bad)]
            if not good:
                raise ValueError(f"no decodable location in a batch of {b}")
            src = torch.arange(b)
            for n, i in enumerate(bad):
                src[i] = good[n % len(good)]
            idx = torch.cat([src, src + b]).to(views.device)
            views = views[idx]
            geo, category = geo[src], category[src]
            keys = [keys[int(j)] for j in src]
            self.stats["refilled"] += len(bad)
        return {
            "q": views[:b],
            "k": views[b:],
            "geo_cluster": geo.to(self.device, non_blocking=True),
            "category": category.to(self.device, non_blocking=True),
            "key": keys,
        }

    def views_batch(self, batch: dict, seed: int = 0) -> dict[str, Any]:
        """A `decode="defer"` views batch to {"views": (B, N, 3, S, S), ...} on the device; an undecodable
        view is replaced by another view of the batch (counted in stats["refilled"])."""
        views_jpeg = [list(v) for v in batch["views_jpeg"]]
        b, n = len(views_jpeg), len(views_jpeg[0])
        res = self.views([blob for v in views_jpeg for blob in v], random.Random(seed))
        self.stats["refilled"] += len(res["bad"])
        out = res["views"]
        return {
            "views": out.reshape(b, n, *out.shape[1:]),
            "geo_cluster": batch["geo_cluster"].to(self.device, non_blocking=True),
            "category": batch["category"].to(self.device, non_blocking=True),
            "key": list(batch["key"]),
        }


def batch_seed(seed: int, epoch: int, rank: int, step: int) -> int:
    """The augmentation seed of one batch: resume at step s draws what an uninterrupted run drew."""
    return seed_of(seed, epoch, rank, step, "gpu-augment") & 0x7FFFFFFFFFFFFFFF


def device_batches(
    batches: Iterable[dict],
    augment: GpuAugment,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    start_step: int = 0,
    prefetch: int = 2,
) -> Iterator[dict]:
    """Augmented device batches from deferred loader batches (pairs or views layout).

    With `prefetch` > 0 the next batches are read, decoded and augmented in a background thread (on
    CUDA on a side stream, with an event the consumer's stream waits on) while the caller trains on
    this one; prefetch=0 does it inline. Batch j's augmentation depends on (seed, epoch, rank, j) only.
    """

    def convert(j: int, batch: dict) -> dict:
        s = batch_seed(seed, epoch, rank, j)
        return augment.pairs(batch, s) if "q_jpeg" in batch else augment.views_batch(batch, s)

    if prefetch <= 0:
        for j, batch in enumerate(batches, start_step):
            yield convert(j, batch)
        return
    # The first loader batch is taken here, in the caller's thread: loader workers fork then, under
    # whatever signal mask the caller set up (the trainer shields them from SIGTERM that way).
    source = iter(batches)
    first = next(source, None)
    if first is None:
        return
    cuda = augment.device.type == "cuda"
    stream = torch.cuda.Stream(device=augment.device) if cuda else None
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def put(item: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            if cuda and augment.device.index is not None:
                torch.cuda.set_device(augment.device)  # the current device is per thread
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                for j, batch in enumerate(itertools.chain([first], source), start_step):
                    out = convert(j, batch)
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not put((out, event)):
                        return
            put((done, None))
        except BaseException as exc:  # re-raised in the consumer
            put((exc, None))

    thread = threading.Thread(target=produce, name="gpu-augment", daemon=True)
    thread.start()
    try:
        while True:
            out, event = q.get()
            if out is done:
                return
            if isinstance(out, BaseException):
                raise out
            if event is not None:
                current = torch.cuda.current_stream(augment.device)
                current.wait_event(event)
                for v in out.values():
                    if isinstance(v, torch.Tensor) and v.is_cuda:
                        v.record_stream(current)
            yield out
    finally:
        stop.set()
        thread.join(timeout=60)


# ------------------------------------------------------------------------------------- the trainer


DATA_PATHS = ("auto", "cpu", "gpu")


def resolve_data_path(mode: str, device: torch.device | str | None = None) -> str:
    """ "cpu" or "gpu" for a --data-path: auto = cpu, whatever the device.

    The GPU path is opt-in (`--data-path gpu`) until a GPU benchmark in BENCHMARKS.md shows it gives the
    CPU path's augmentation statistics and is faster; it has only run on CPU tensors so far. `auto` stays
    accepted (configs of earlier runs hold it) and will pick the GPU path on CUDA once that is shown.
    `device` is kept for that."""
    if mode not in DATA_PATHS:
        from geo_ssl.pipeline.common.errors import GeoSSLError

        raise GeoSSLError(f"--data-path {mode!r}: choose one of {', '.join(DATA_PATHS)}")
    return "cpu" if mode == "auto" else mode


class DeviceDataPath:
    """The trainer's GPU data path: wraps an epoch of deferred loader batches (`decode="defer"`) into
    augmented batches on `device`, in the CPU loader's dict format, prefetched in the background."""

    def __init__(
        self,
        device: torch.device | str,
        image_size: int = 224,
        augment: bool = True,
        seed: int = 0,
        rank: int = 0,
        channels_last: bool = True,
        prefetch: int = 2,
        augmentation: MocoV2Augment | None = None,
    ) -> None:
        self.augment = GpuAugment(image_size, device, augment=augment, channels_last=channels_last)
        if augment and augmentation is not None:  # the CPU loader's (--crop, --crop-scale), the same sampler
            self.augment.aug = augmentation
        self.seed, self.rank, self.prefetch = seed, rank, prefetch

    def batches(self, batches: Iterable[dict], epoch: int, start_step: int = 0) -> Iterator[dict]:
        return device_batches(
            batches, self.augment, self.seed, epoch, self.rank, start_step, prefetch=self.prefetch
        )
