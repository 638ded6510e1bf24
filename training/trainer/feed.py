"""The pretraining loader of a config: the method names the loader (pairs or views), the config the rest.

The training augmentation is built here, once, from --crop, --crop-scale and --image-size, and the same
object goes to the CPU loader's workers and to the GPU data path."""

from __future__ import annotations

from collections.abc import Iterable

from geo_ssl.schemas.dataset_card import refuse_temporal
from geo_ssl.training.data.augment import MocoV2Augment
from geo_ssl.training.data.gassl_crop import augment_for
from geo_ssl.training.data.gpu_augment import resolve_data_path
from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader, views_loader
from geo_ssl.training.methods import get_method
from geo_ssl.training.trainer.config import PretrainConfig


def augmentation(cfg: PretrainConfig) -> MocoV2Augment | None:
    """The training augmentation (None with --no-augment: resize + centre crop only)."""
    return augment_for(cfg.crop, cfg.image_size, cfg.crop_scale) if cfg.augment else None


def make_loader(
    cfg: PretrainConfig, rank: int, world_size: int, output: str = "float", aug: MocoV2Augment | None = None
) -> Iterable:
    """This rank's pretraining loader (len() = steps per epoch, set_epoch(e) reshuffles).

    output="uint8": 8-bit batches that the method's `inputs` normalise on the training device (the
    trainer's choice: a quarter of the bytes to move, no float pass on the loader's cores). `aug`: the
    augmentation when the caller built it already (default: built from cfg)."""
    method = get_method(cfg.method)
    if method.temporal:  # single-view data sets (GeoImageNet) have no second date of a place
        refuse_temporal(cfg.data, cfg.method)
    lc = LoaderConfig(
        cfg.data, split=cfg.split, batch_size=cfg.batch_size // world_size, image_size=cfg.image_size,
        temporal=method.temporal, augment=cfg.augment, num_workers=cfg.num_workers,
        shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, strict=cfg.strict,
        cache_dir=cfg.cache_dir or None, cache_limit=cfg.cache_limit,
        prefetch=None if cfg.prefetch < 0 else cfg.prefetch, prefetch_bytes=cfg.prefetch_bytes,
        epoch_samples=cfg.epoch_samples or None, epoch_unit=cfg.epoch_unit, augmentation=aug or augmentation(cfg),
        # the GPU data path gets JPEG bytes; the trainer decodes + augments them on the device
        decode="defer" if resolve_data_path(cfg.data_path) == "gpu" else "cpu", output=output,
    )  # fmt: skip
    if method.family.loader == "views":
        return views_loader(lc, 2, rank, world_size)
    return pretrain_loader(lc, rank, world_size)
