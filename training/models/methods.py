"""The SSL methods by name: which model to build, which loader feeds it, how a batch becomes its inputs.

| name          | model              | positives                                  | geo head |
|---------------|--------------------|--------------------------------------------|----------|
| moco          | MoCo-v2            | two augmentations of one view              | no       |
| moco+tp       | MoCo-v2            | two dates of one location (temporal pair)  | no       |
| moco+geo      | MoCo-v2 + geo head | two augmentations of one view              | yes      |
| moco+geo+tp   | MoCo-v2 + geo head | two dates of one location                  | yes      |
| simclr        | SimCLR (NT-Xent)   | two augmentations of one view              | no       |
| simclr+tp     | SimCLR (NT-Xent)   | two dates of one location                  | no       |
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.trainer.config import PretrainConfig
from geo_ssl.training.trainer.preflight import check_n_clusters, data_cluster_count


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "moco" or "simclr"
    temporal: bool
    geo: bool

    @property
    def backbone_prefix(self) -> str:
        """Key prefix of the evaluated encoder inside the model's state_dict."""
        return "moco.encoder_q." if self.family == "moco" else "encoder."


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("moco", "moco", temporal=False, geo=False),
        Method("moco+tp", "moco", temporal=True, geo=False),
        Method("moco+geo", "moco", temporal=False, geo=True),
        Method("moco+geo+tp", "moco", temporal=True, geo=True),
        Method("simclr", "simclr", temporal=False, geo=False),
        Method("simclr+tp", "simclr", temporal=True, geo=False),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise GeoSSLError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_model(cfg: PretrainConfig, n_clusters: int, bn_splits: int) -> nn.Module:
    """The task module: forward(*inputs) -> (loss, stats), with a `backbone` property."""
    from geo_ssl.training.models.moco import GeoMoCo, MoCo
    from geo_ssl.training.models.simclr import SimCLR

    method = get_method(cfg.method)
    if method.family == "simclr":
        return SimCLR(cfg.arch, dim=cfg.dim, T=cfg.temperature, bn_splits=bn_splits, head_bn=cfg.head_bn)
    moco = MoCo(
        cfg.arch, dim=cfg.dim, K=cfg.moco_k, m=cfg.moco_m, T=cfg.temperature, mlp=cfg.mlp,
        bn_splits=bn_splits, shuffle_bn=cfg.shuffle_bn, head_bn=cfg.head_bn,
    )  # fmt: skip
    return GeoMoCo(moco, n_clusters=n_clusters if method.geo else 0, moco_weight=cfg.moco_weight,
                   geo_weight=cfg.geo_weight)  # fmt: skip


def make_loader(cfg: PretrainConfig, rank: int, world_size: int, output: str = "float") -> Iterable:
    """This rank's pretraining loader (len() = steps per epoch, set_epoch(e) reshuffles).

    output="uint8": 8-bit batches that `batch_inputs` normalises on the training device (the trainer's
    choice: a quarter of the bytes to move, no float pass on the loader's cores)."""
    from geo_ssl.training.data.gpu_augment import resolve_data_path
    from geo_ssl.training.data.loader import LoaderConfig, pretrain_loader, views_loader

    method = get_method(cfg.method)
    if method.temporal:  # single-view data sets (GeoImageNet) have no second date of a place
        from geo_ssl.pipeline.shards.sample_extras import refuse_temporal

        refuse_temporal(cfg.data, cfg.method)
    lc = LoaderConfig(
        cfg.data, split=cfg.split, batch_size=cfg.batch_size // world_size, image_size=cfg.image_size,
        temporal=method.temporal, augment=cfg.augment, num_workers=cfg.num_workers,
        shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, strict=cfg.strict,
        cache_dir=cfg.cache_dir or None, cache_limit=cfg.cache_limit,
        epoch_samples=cfg.epoch_samples or None,
        epoch_unit=cfg.epoch_unit, crop=cfg.crop, crop_scale=cfg.crop_scale,  # GASSL's epoch and +TP crop
        # the GPU data path gets JPEG bytes; the trainer decodes + augments them on the device
        decode="defer" if resolve_data_path(cfg.data_path) == "gpu" else "cpu", output=output,
    )  # fmt: skip
    if method.family == "simclr":
        return views_loader(lc, 2, rank, world_size)
    return pretrain_loader(lc, rank, world_size)


def batch_inputs(
    method: Method, batch: dict, device: torch.device, channels_last: bool, n_clusters: int = 0
) -> tuple:
    """Move one loader item to the device as the model's forward arguments.

    uint8 images (the loader's output="uint8") are normalised on the device after the move
    (augment.normalize_batch), into the same float32 values the float output holds.

    With a geo head (`n_clusters` > 0) every cluster id must be a class of the head: an id out of
    range stops the run naming the sample, instead of an IndexError deep in cross-entropy."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if method.family == "simclr":
        return (_images_to(batch["views"], device, torch.contiguous_format),)
    q, k, geo = batch["q"], batch["k"], batch["geo_cluster"]
    if method.geo and n_clusters:
        check_cluster_ids(geo, batch.get("key"), n_clusters)
    return (_images_to(q, device, fmt), _images_to(k, device, fmt), geo.to(device, non_blocking=True))


def _images_to(images: torch.Tensor, device: torch.device, fmt: torch.memory_format) -> torch.Tensor:
    """Float images moved as they are; uint8 ones moved as bytes, then normalised on the device."""
    if images.dtype != torch.uint8:
        if images.dim() != 4:
            return images.to(device, non_blocking=True)
        return images.to(device, non_blocking=True, memory_format=fmt)
    from geo_ssl.training.data.augment import normalize_batch

    return normalize_batch(images.to(device, non_blocking=True), memory_format=fmt)


def check_cluster_ids(geo: torch.Tensor, keys: list[str] | None, n_clusters: int) -> None:
    """Raise GeoSSLError naming the first sample whose geo cluster id is not in [0, n_clusters)."""
    bad = ((geo < 0) | (geo >= n_clusters)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        key = keys[i] if keys and i < len(keys) else f"#{i} of the batch"
        raise GeoSSLError(
            f"sample {key}: geo cluster {int(geo[i])} is outside the head's 0..{n_clusters - 1} "
            "(shards built with a larger --k, or a damaged .cls/json; check them with `geo-build-dataset "
            "validate`, or pass the data's --n-clusters)"
        )


def resolve_n_clusters(cfg: PretrainConfig) -> int:
    """cfg.n_clusters, or the cluster count recorded beside the shards (a build folder's dataset card).

    A --n-clusters below the data's count is refused up front (the geo loss would fail mid-run on the
    first sample of a higher cluster); above it only wastes outputs, so it is allowed."""
    if not get_method(cfg.method).geo:
        return 0
    data_k, _ = data_cluster_count(cfg.data)
    if cfg.n_clusters:
        check_n_clusters(cfg)
        return cfg.n_clusters
    if data_k:
        return data_k
    raise GeoSSLError(
        f"{cfg.data}: no cluster count found in dataset.json or index/cluster_stats.json; pass --n-clusters"
    )
