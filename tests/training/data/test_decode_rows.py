"""Decoding only the rows a crop needs (decode.row_band): stored views carry a restart marker every MCU
row (pipeline/shards/imageops.encode_jpeg), and the crops cut from the band equal those from the whole
image, bit for bit."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image

from geo_ssl.pipeline.shards.imageops import encode_jpeg
from geo_ssl.training.data.augment import MocoV2Augment
from geo_ssl.training.data.decode import decode_crops, decode_rgb, jpeg_size, row_band


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    """Textured enough that every MCU row has its own entropy-coded bytes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 6 + 1, w // 6 + 1, 3)).astype(np.uint8)
    noise = rng.integers(-20, 21, (h, w, 3))
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(int)
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, subsampling: int = 2, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, subsampling=subsampling, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("subsampling", [2, 1, 0])  # 4:2:0, 4:2:2, 4:4:4 (MCU rows of 16, 8, 8 px)
def test_band_crops_equal_whole_image_crops(subsampling: int) -> None:
    """MoCo crops (one or two per decode, reductions 1 to 4) from the band decode equal the crops of the
    same JPEG without restart markers (same coefficients), and most decodes do use a band."""
    rng = random.Random(subsampling)
    aug = MocoV2Augment()
    banded = 0
    for seed, (w, h) in enumerate([(300, 232), (232, 301), (197, 163)]):
        image = _image(w, h, seed)
        plain, marked = _jpeg(image, subsampling), _jpeg(image, subsampling, restart_marker_rows=1)
        assert row_band(plain, 0, 10) is None
        for _ in range(12):
            size = rng.choice((96, 48, 24))
            boxes = [aug.sample(rng, w, h).box for _ in range(rng.choice((1, 2)))]
            bottom = max(b[1] + b[3] for b in boxes)
            banded += row_band(marked, min(b[1] for b in boxes), bottom + 2) is not None
            for a, b in zip(
                decode_crops(plain, boxes, size, w, h), decode_crops(marked, boxes, size, w, h), strict=True
            ):
                assert torch.equal(a, b), (boxes, size)
    assert banded >= 18


def test_band_is_the_whole_decodes_rows() -> None:
    """The band JPEG is smaller and decodes to exactly the whole image's rows from its first row on."""
    data = _jpeg(_image(240, 200), restart_marker_rows=1)
    whole = decode_rgb(data)
    band, first, rows = row_band(data, 40, 90)
    assert first <= 40 and first + rows >= 90 and first % 16 == 0 and rows < 200
    assert len(band) < 0.5 * len(data)
    np.testing.assert_array_equal(decode_rgb(bytes(band)), whole[first : first + rows])
    last, first, rows = row_band(data, 150, 200)
    np.testing.assert_array_equal(decode_rgb(bytes(last)), whole[first:])
    assert row_band(data, 0, 200) is None  # the whole image: nothing to cut


def test_stored_views_carry_mcu_row_markers() -> None:
    """write-shards' encoder marks every MCU row, so the loader can cut bands out of stored views."""
    data = encode_jpeg(_image(320, 256), 90)
    assert jpeg_size(data) == (320, 256)
    band = row_band(data, 100, 140)
    assert band is not None and band[2] <= 64


def test_no_band_from_damaged_or_other_jpegs() -> None:
    """Truncated data, markers out of sequence and progressive JPEGs fall back to the whole decode (which
    reports the damage); the fallback still decodes a good JPEG without markers."""
    image = _image(240, 200)
    data = _jpeg(image, restart_marker_rows=1)
    assert row_band(data[: len(data) // 2], 100, 120) is None
    second = data.index(b"\xff\xd1")
    broken = data[: second + 1] + b"\xd5" + data[second + 2 :]
    assert row_band(broken, 100, 120) is None
    assert row_band(_jpeg(image, progressive=True), 100, 120) is None
    assert row_band(b"not a jpeg", 0, 1) is None
    w, h = jpeg_size(data)
    crop = decode_crops(_jpeg(image), [(10.0, 100.0, 60.0, 40.0)], 32, w, h)[0]
    assert crop.shape == (3, 32, 32)
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(bytes(row_band(data, 0, 20)[0])[:-40])  # a band keeps libjpeg's checks


def test_loader_batches_equal_with_and_without_row_markers(tmp_path, monkeypatch) -> None:
    """The loader end to end: shards whose views carry MCU-row markers (cut into bands) give the same
    uint8 batches as the same views without markers (decoded whole)."""
    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader
    from tests.shard_fixtures import make_tiny_shards

    make_tiny_shards(tmp_path / "plain", n_locations=10, n_shards=1, image_size=128, seed=3)
    save = Image.Image.save

    def save_marked(self, fp, format=None, **params):  # the fixture's encoder, plus the markers
        if format == "JPEG":
            params["restart_marker_rows"] = 1
        return save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", save_marked)
    make_tiny_shards(tmp_path / "marked", n_locations=10, n_shards=1, image_size=128, seed=3)
    monkeypatch.undo()

    def batches(folder) -> list[torch.Tensor]:
        cfg = LoaderConfig(urls=str(folder), split="train", batch_size=5, image_size=48, num_workers=0,
                           shuffle_buffer=4, epoch_samples=20, output="uint8")  # fmt: skip
        return [torch.stack([b["q"], b["k"]]) for b in pretrain_loader(cfg)]

    from geo_ssl.training.data import decode

    bands = []
    monkeypatch.setattr(decode, "row_band", lambda *a: bands.append(row_band(*a)) or bands[-1])
    plain, marked = batches(tmp_path / "plain"), batches(tmp_path / "marked")
    assert len(plain) == len(marked) == 4
    assert sum(b is not None for b in bands) >= 10  # the marked views were cut into bands
    for a, b in zip(plain, marked, strict=True):
        assert torch.equal(a, b)
