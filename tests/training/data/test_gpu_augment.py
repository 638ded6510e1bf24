"""The GPU data path (geo_ssl.training.data.gpu_augment), run on CPU tensors: same ops, same distribution
as the CPU path, deferred loader batches in, {"q", "k", ...} out."""

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
    augment_crop,
    finish_views,
    gaussian_kernel,
)
from geo_ssl.training.data.augment import gaussian_blur as cpu_blur
from geo_ssl.training.data.decode import decode_crops, jpeg_size
from geo_ssl.training.data.gpu_augment import (
    GpuAugment,
    augment_batch,
    color_jitter,
    decode_jpegs,
    device_batches,
    gaussian_blur,
    gaussian_kernels,
    hsv_to_rgb,
    rgb_to_hsv,
)
from tests.shard_fixtures import make_tiny_shards

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _levels(x: torch.Tensor) -> torch.Tensor:
    return (x.float() * STD + MEAN) * 255.0


def _jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(30, 230, (max(2, h // 8), max(2, w // 8), 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    sizes = [(96, 80), (80, 96), (96, 80), (112, 112), (72, 90), (96, 80)]
    return [_jpeg(w, h, i) for i, (w, h) in enumerate(sizes)]


def test_hsv_round_trip_matches_colorsys():
    rng = np.random.default_rng(0)
    rgb = rng.random((1, 3, 8, 8)).astype(np.float32)
    rgb[0, :, 0, 0] = 0.5  # grey: hue and saturation 0
    hsv = rgb_to_hsv(torch.from_numpy(rgb))
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in rgb[0].reshape(3, -1).T])
    assert np.abs(hsv[0].reshape(3, -1).T.numpy() - ref).max() < 1e-5
    assert (hsv_to_rgb(hsv) - torch.from_numpy(rgb)).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("op", "factor"), [("brightness", 1.4), ("contrast", 0.6), ("saturation", 1.4), ("hue", -0.1)]
)
def test_batched_colour_ops_match_torchvision_float_ops(op, factor):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((3, 3, 16, 16)).astype(np.float32))
    j = ("brightness", "contrast", "saturation", "hue").index(op)
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 3)
    factors[1, j] = factor  # only sample 1 has the op; the others pass through unchanged
    order = torch.full((3, 4), -1)
    order[1, 0] = j
    ours = color_jitter(x.clone(), factors, order)
    ref = getattr(TF, f"adjust_{op}")(x[1], factor)
    assert (ours[1] - ref).abs().max() < 1e-4
    assert torch.equal(ours[0], x[0]) and torch.equal(ours[2], x[2])


def test_per_sample_blur_is_the_cpu_kernel():
    sig = torch.tensor([0.1, 0.7, 2.0])
    k = gaussian_kernels(sig)
    for i, s in enumerate(sig.tolist()):
        ref = gaussian_kernel(s)
        r = (len(ref) - 1) // 2
        assert np.abs(k[i, 6 - r : 7 + r].numpy() - ref).max() < 1e-6 and k[i].sum() == pytest.approx(1.0)
    img = (np.random.default_rng(2).random((3, 24, 24, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0
    ours = gaussian_blur(x, sig) * 255.0
    for i, s in enumerate(sig.tolist()):
        ref = torch.from_numpy(cpu_blur(img[i], s)).permute(2, 0, 1).float()
        assert (ours[i] - ref).abs().max() < 1.0  # same kernel and border; the CPU one rounds to uint8


def test_same_parameters_give_the_cpu_paths_pixels(blobs):
    """Every op on: the device path (roi_align crop, float ops) vs the CPU path (DCT decode, 8-bit OpenCV)."""
    aug = MocoV2Augment(image_size=48)
    rng = random.Random(3)
    images = decode_jpegs(blobs, "cpu")["images"]
    params = [aug.sample(rng, int(im.shape[-1]), int(im.shape[-2])) for im in images]
    params[0] = ViewParams(
        box=params[0].box, jitter=(("hue", 0.08), ("contrast", 1.3)), gray=False, blur_sigma=1.5
    )
    params[1] = ViewParams(box=params[1].box, gray=True, flip=True)
    ours = _levels(augment_batch(images, params, 48, channels_last=True))
    assert ours.is_contiguous(memory_format=torch.channels_last) and ours.shape == (6, 3, 48, 48)
    crops = []
    for data, p in zip(blobs, params, strict=True):
        w, h = jpeg_size(data)
        crops.append(augment_crop(decode_crops(data, [p.box], 48, w, h)[0], p))
    cpu = _levels(finish_views(torch.stack(crops)))
    diff = (ours - cpu).abs().mean((1, 2, 3))
    assert diff.max() < 3.5, diff  # resampler and decoder differ slightly; the ops agree
    assert (ours[1, 0] - ours[1, 2]).abs().max() < 0.01  # grey


def test_both_paths_draw_from_the_same_distribution(blobs):
    """Independent draws: parameter statistics are the CPU sampler's, and the pixel statistics of many
    views of fixed inputs agree between the batched device path and the CPU path."""
    n_rep = 24
    gpu = GpuAugment(image_size=32, device="cpu", channels_last=False)
    gpu.aug = MocoV2Augment(image_size=32, blur_reference=0)  # unscaled sigma: blur visible at 32 px
    res = gpu.views(blobs * n_rep, random.Random(5))
    params = res["params"]
    assert abs(np.mean([bool(p.jitter) for p in params]) - 0.8) < 0.1
    assert abs(np.mean([p.gray for p in params]) - 0.2) < 0.1
    assert abs(np.mean([p.blur_sigma > 0 for p in params]) - 0.5) < 0.1
    assert abs(np.mean([p.flip for p in params]) - 0.5) < 0.1
    areas = [
        p.box[2] * p.box[3] / (w * h)
        for p, (w, h) in zip(
            params, [(96, 80), (80, 96), (96, 80), (112, 112), (72, 90), (96, 80)] * n_rep, strict=True
        )
    ]
    assert 0.19 <= min(areas) and max(areas) <= 1.0 and abs(np.mean(areas) - 0.6) < 0.06
    ours = _levels(res["views"])
    aug, rng = MocoV2Augment(image_size=32, blur_reference=0), random.Random(6)
    crops, cpu_params = [], []
    for data in blobs * n_rep:
        w, h = jpeg_size(data)
        p = aug.sample(rng, w, h)
        cpu_params.append(p)
        crops.append(augment_crop(decode_crops(data, [p.box], 32, w, h)[0], p))
    cpu = _levels(finish_views(torch.stack(crops)))

    def blur_effect(t: torch.Tensor, ps: list) -> float:  # sharpness of blurred views / of the others
        sharp = t.diff(dim=-1).abs().mean((1, 2, 3))
        blurred = torch.tensor([p.blur_sigma > 0 for p in ps])
        return float(sharp[blurred].mean() / sharp[~blurred].mean())

    assert (
        blur_effect(ours, params) < 0.9
        and abs(blur_effect(ours, params) - blur_effect(cpu, cpu_params)) < 0.1
    )
    for stat in (
        lambda t: t.mean((1, 2, 3)),
        lambda t: t.std((1, 2, 3)),
        lambda t: (t[:, 0] - t[:, 2]).abs().mean((1, 2)),  # colourfulness: jitter, grayscale
        lambda t: t.diff(dim=-1).abs().mean((1, 2, 3)),  # sharpness: blur, resampling
    ):
        a, b = stat(ours), stat(cpu)
        assert abs(float(a.mean() - b.mean())) < 0.15 * float(b.std()) + 2.0
        assert abs(float(a.std() - b.std())) < 0.25 * float(b.std()) + 1.0


def test_pairs_refill_undecodable_and_are_reproducible(blobs):
    gpu = GpuAugment(image_size=32, device="cpu")
    batch = {
        "q_jpeg": blobs[:4],
        "k_jpeg": [blobs[4], b"\xff\xd8 not really a jpeg", blobs[5], blobs[0]],
        "geo_cluster": torch.arange(4),
        "category": torch.arange(4) + 10,
        "key": ["a", "b", "c", "d"],
    }
    out = gpu.pairs(batch, seed=7)
    assert out["q"].shape == out["k"].shape == (4, 3, 32, 32)
    assert out["key"][1] != "b" and out["key"][0] == "a" and gpu.stats["refilled"] == 1
    assert gpu.stats["undecodable"] == 1
    i = out["key"].index("a")
    assert int(out["category"][1]) == int(out["geo_cluster"][1]) + 10  # labels follow the replacement
    again = GpuAugment(image_size=32, device="cpu").pairs(batch, seed=7)
    assert torch.equal(again["q"], out["q"]) and torch.equal(again["k"], out["k"]) and i == 0
    other = GpuAugment(image_size=32, device="cpu").pairs(batch, seed=8)
    assert not torch.equal(other["q"], out["q"])


def test_device_batches_from_the_deferred_loader(tmp_path):
    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader

    make_tiny_shards(tmp_path, n_locations=12, n_shards=2, max_views=3)
    cfg = LoaderConfig(
        str(tmp_path),
        split="train",
        batch_size=4,
        image_size=32,
        num_workers=0,
        shuffle_buffer=4,
        decode="defer",
    )
    loader = pretrain_loader(cfg)
    gpu = GpuAugment(image_size=32, device="cpu")
    batches = list(device_batches(loader, gpu, seed=1, epoch=0))
    assert len(batches) == len(loader) == 3
    keys = [k for b in batches for k in b["key"]]
    assert len(set(keys)) == 12  # an exact epoch, every location once
    for b in batches:
        assert b["q"].shape == (4, 3, 32, 32) and b["q"].dtype == torch.float32
        assert b["geo_cluster"].dtype == torch.int64
        assert not torch.equal(b["q"], b["k"])
    # Resume: batch 2 of the same epoch, drawn again from step 2, is identical.
    loader.set_epoch(0, start_step=2)
    resumed = list(device_batches(loader, gpu, seed=1, epoch=0, start_step=2))
    assert len(resumed) == 1 and torch.equal(resumed[0]["q"], batches[2]["q"])


def test_trainer_data_path_gpu_runs_on_cpu_and_resumes_exactly(tmp_path, monkeypatch, request):
    """`--data-path gpu` on a machine without CUDA: the deferred loader + this module feed the trainer,
    and a run stopped after step 1 and resumed matches an uninterrupted one."""
    from geo_ssl.training.data import gpu_augment
    from geo_ssl.training.trainer.config import PretrainConfig
    from geo_ssl.training.trainer.loop import pretrain
    from geo_ssl.training.trainer.run_log import read_metrics

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and immune to a busy machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    calls = []
    real_pairs = gpu_augment.GpuAugment.pairs
    monkeypatch.setattr(
        gpu_augment.GpuAugment,
        "pairs",
        lambda self, b, seed=0: calls.append(seed) or real_pairs(self, b, seed),
    )
    shards = tmp_path / "shards"
    make_tiny_shards(shards, n_locations=16, n_shards=2, split="train", image_size=40, n_clusters=4)

    def cfg(out: str, **kw) -> PretrainConfig:
        values = dict(
            data=str(shards), out=str(tmp_path / out), arch="resnet18", image_size=32, batch_size=4, moco_k=16,
            moco_m=0.9, lr=0.03, epochs=1, num_workers=0, shuffle_buffer=8, n_clusters=4, knn_every=0,
            log_every=1, ckpt_every=1000, method="moco+tp", epoch_samples=4 * 3, data_path="gpu",
        )  # fmt: skip
        values.update(kw)
        return PretrainConfig(**values)

    assert pretrain(cfg("a"))["steps"] == 3
    assert len(calls) == 3 and len(set(calls)) == 3  # every batch went through the device path
    pretrain(cfg("b", max_steps=1))
    before = len(calls)
    pretrain(cfg("b", resume=True))
    assert calls[before:] == calls[1:3]  # the resumed steps drew the same augmentation seeds
    a = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "a"), "train")}
    b = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "b"), "train")}
    assert sorted(b) == [1, 2, 3]
    for step, loss in b.items():
        assert loss == pytest.approx(a[step], rel=1e-5), step


def test_device_batches_reraise_producer_errors_and_views_layout(blobs):
    gpu = GpuAugment(image_size=16, device="cpu")
    views = {"views_jpeg": [blobs[:3], blobs[3:6]], "geo_cluster": torch.tensor([1, 2]),
             "category": torch.tensor([3, 4]), "key": ["a", "b"]}  # fmt: skip
    bad = {"q_jpeg": [b"junk"], "k_jpeg": [b"junk"], "geo_cluster": torch.tensor([0]),
           "category": torch.tensor([0]), "key": ["x"]}  # fmt: skip
    it = device_batches([views, bad], gpu, prefetch=2)
    first = next(it)
    assert first["views"].shape == (2, 3, 3, 16, 16) and first["key"] == ["a", "b"]
    with pytest.raises(ValueError, match="decodable"):
        next(it)
