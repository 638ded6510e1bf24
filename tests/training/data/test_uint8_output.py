"""The loader's 8-bit output (output="uint8") and its normalisation on the consumer's device: the same
float inputs as the default float output, and the trainer consumes it that way."""

from __future__ import annotations

import pytest
import torch

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.augment import augment_crop, finish_views, normalize_batch, uint8_batch
from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader, views_loader
from geo_ssl.training.methods import get_method
from tests.shard_fixtures import make_tiny_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("shards")
    make_tiny_shards(folder, n_locations=12, n_shards=2, split="train", image_size=48, n_clusters=4)
    return str(folder)


def _cfg(shards: str, **kw) -> LoaderConfig:
    values = dict(urls=shards, split="train", batch_size=4, image_size=32, num_workers=0, shuffle_buffer=4)
    values.update(kw)
    return LoaderConfig(**values)


def test_normalize_batch_matches_the_float_lookup_on_every_level():
    levels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    ref = finish_views(levels)
    assert (normalize_batch(levels) - ref).abs().max() < 1e-6  # the arithmetic a GPU runs
    assert torch.equal(normalize_batch(levels, memory_format=torch.contiguous_format), ref)  # CPU: the LUT
    cl = normalize_batch(levels, memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and cl.dtype == torch.float32
    five = normalize_batch(levels[None].expand(2, 1, 3, 16, 16), memory_format=torch.channels_last)
    assert five.shape == (2, 1, 3, 16, 16) and (five[1, 0] - ref[0]).abs().max() < 1e-6
    with pytest.raises(ValueError):
        normalize_batch(levels.float())


def test_uint8_batch_is_channels_last_and_the_last_op_writes_into_its_slot():
    from geo_ssl.training.data.augment import ViewParams

    out = uint8_batch((2, 3, 3, 8, 8))
    assert out.shape == (2, 3, 3, 8, 8) and out.permute(0, 1, 3, 4, 2).is_contiguous()
    slots = out.view(6, 3, 8, 8).permute(0, 2, 3, 1).numpy()  # the batch's own memory, HWC per view
    crop = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8).permute(2, 0, 1)
    for params in (
        ViewParams(box=(0, 0, 8, 8)),
        ViewParams(box=(0, 0, 8, 8), jitter=(("hue", 0.1),), flip=True),
    ):
        got = augment_crop(crop, params, out=slots[5])
        assert got.data_ptr() == slots[5].ctypes.data  # a view of the slot, nothing copied after
        assert torch.equal(out[1, 2], augment_crop(crop, params))


@pytest.mark.parametrize("augment", [True, False])
def test_pairs_uint8_output_normalises_to_the_float_output(shards, augment):
    kw = dict(augment=augment, epoch_samples=8)
    floats = list(pretrain_loader(_cfg(shards, **kw)))
    bytes_ = list(pretrain_loader(_cfg(shards, output="uint8", **kw)))
    assert len(floats) == len(bytes_) == 2
    for f, b in zip(floats, bytes_, strict=True):
        assert f["key"] == b["key"] and torch.equal(f["geo_cluster"], b["geo_cluster"])
        for name in ("q", "k"):
            assert b[name].dtype == torch.uint8 and b[name].shape == f[name].shape == (4, 3, 32, 32)
            assert (normalize_batch(b[name]) - f[name]).abs().max() < 1e-6


def test_views_uint8_output_from_a_worker_process(shards):
    kw = dict(epoch_samples=4, num_workers=1)
    f = next(iter(views_loader(_cfg(shards, **kw), n_views=3)))
    b = next(iter(views_loader(_cfg(shards, output="uint8", **kw), n_views=3)))
    assert b["views"].dtype == torch.uint8 and b["views"].shape == (4, 3, 3, 32, 32)
    assert (normalize_batch(b["views"]) - f["views"]).abs().max() < 1e-6
    with pytest.raises(GeoSSLError, match="output="):
        pretrain_loader(_cfg(shards, output="half"))


def test_batch_inputs_normalise_uint8_on_the_device_as_the_float_path(shards):
    f = next(iter(pretrain_loader(_cfg(shards, epoch_samples=4))))
    b = next(iter(pretrain_loader(_cfg(shards, epoch_samples=4, output="uint8"))))
    method, cpu = get_method("moco+geo+tp"), torch.device("cpu")
    for channels_last in (False, True):
        qf, kf, gf = method.family.inputs(method, f, cpu, channels_last, n_clusters=4)
        qb, kb, gb = method.family.inputs(method, b, cpu, channels_last, n_clusters=4)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert qb.dtype == torch.float32 and qb.is_contiguous(memory_format=fmt)
        assert (qb - qf).abs().max() < 1e-6 and (kb - kf).abs().max() < 1e-6 and torch.equal(gb, gf)


def test_the_trainer_reads_uint8_batches_and_feeds_the_model_the_float_values(shards, tmp_path):
    from geo_ssl.training.trainer.config import PretrainConfig
    from geo_ssl.training.trainer.distributed import DistContext
    from geo_ssl.training.trainer.loop import Trainer

    cfg = PretrainConfig(
        data=shards, out=str(tmp_path / "run"), arch="resnet18", image_size=32, batch_size=4, moco_k=8,
        epochs=1, num_workers=0, shuffle_buffer=4, n_clusters=4, knn_every=0,
    )  # fmt: skip
    trainer = Trainer(cfg, DistContext(0, 0, 1, torch.device("cpu"), None))
    try:
        trainer._build(trainer._configure())
        batch = next(iter(trainer.loader))
        assert batch["q"].dtype == torch.uint8
        q, _, _ = trainer.family.inputs(trainer.method, batch, torch.device("cpu"), False, 4)
        floats = next(iter(pretrain_loader(_cfg(shards, batch_size=4, shuffle_buffer=4))))
        assert floats["key"] == batch["key"]
        assert (q - floats["q"]).abs().max() < 1e-6
    finally:
        trainer.release()


def test_crops_outlive_the_reused_decode_buffer():
    """decode_crops decodes into a per-thread scratch buffer: every crop it returns owns its pixels, also
    a crop that needs no resize (exactly the output size), so the next decode cannot overwrite it."""
    import io

    import numpy as np
    from PIL import Image

    from geo_ssl.training.data.decode import decode_crops

    def jpeg(value: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buf, "JPEG", quality=95)
        return buf.getvalue()

    first = decode_crops(jpeg(40), [(0, 0, 32, 32), (4, 4, 20, 20)], 32, 32, 32)
    kept = [c.clone() for c in first]
    decode_crops(jpeg(200), [(0, 0, 32, 32)], 32, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, kept, strict=True))
    assert abs(int(first[0][0, 5, 5]) - 40) <= 2


def test_undecodable_views_are_replaced_in_the_uint8_batch_as_in_the_float_one(tmp_path):
    """A sample whose JPEG fails is replaced by another of the batch: the uint8 batch, rendered in place,
    holds the replacement's pixels exactly as the float batch does."""
    import random

    from tests.shard_fixtures import make_sample, write_shard

    make_tiny_shards(tmp_path, n_locations=4, n_shards=1, image_size=48)
    rng = random.Random(5)
    broken = [make_sample("train", 100 + i, 1, 48, i, 6, 1, rng) for i in range(4)]
    for sample in broken:
        sample["00.jpg"] = sample["00.jpg"][:200]  # truncated: every view 00 is undecodable
    good = [make_sample("train", 110 + i, 2, 48, i, 6, 2, rng) for i in range(4)]
    write_shard(
        str(tmp_path / "train-000001.tar"), [x for pair in zip(good, broken, strict=True) for x in pair]
    )
    (tmp_path / "manifest.parquet").unlink()  # it does not list the added shard; counted from the headers
    kw = dict(epoch_samples=12, shuffle_buffer=0, batch_size=12, temporal=False)
    f = pretrain_loader(_cfg(str(tmp_path), **kw))
    b = pretrain_loader(_cfg(str(tmp_path), output="uint8", **kw))
    fb, bb = next(iter(f)), next(iter(b))
    assert f.stats.refilled == b.stats.refilled > 0  # some were replaced
    assert fb["key"] == bb["key"]
    for name in ("q", "k"):
        assert (normalize_batch(bb[name]) - fb[name]).abs().max() < 1e-6
