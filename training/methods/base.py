"""What an SSL method is to the trainer: a family object (solo-learn's and lightly's pattern).

A family (MoCo, SimCLR, BYOL, ...) builds its model from the config, names the loader that feeds it
("pairs": {"q", "k"}, two dates of one location with +tp, else two augmentations of one view; "views":
{"views": [B, 2, ...]}), turns a loader batch into the model's forward arguments, adds its own config
checks, and says where its evaluated encoder sits in the model's state_dict. The trainer only talks to
these methods, so a new method is one file with a family and one `register` line (registry.py).

A method name is a family plus modifiers: "+tp" (temporal positives) for every family, "+geo" (the
GASSL geo head) for families that offer it: moco, moco+tp, moco+geo, moco+geo+tp, simclr, ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from geo_ssl.pipeline.common.errors import GeoSSLError

LOADERS = ("pairs", "views")


@dataclass(frozen=True)
class Method:
    """One method name: its family and modifiers."""

    name: str
    family: MethodFamily
    temporal: bool
    geo: bool

    @property
    def backbone_prefix(self) -> str:
        """Key prefix of the evaluated encoder inside the model's state_dict."""
        return self.family.backbone_prefix

    @property
    def description(self) -> str:
        """One line for the model card."""
        return self.family.describe(self)


class MethodFamily:
    """Base of every method family; subclasses set the class attributes and implement `build`.

    `options` is a dataclass of the family's own settings (its config section): each field is a config
    key and a flag of geo-pretrain (`byol_tau` -> `--byol-tau`), with `metadata={"help": ...}`. Its
    values reach `build`, `check` and `on_step` as `self.section(cfg)`. MoCo's settings predate this and
    are plain config fields (moco_k, moco_m, shuffle_bn, ...), kept so that configs and checkpoints of
    earlier runs still load."""

    name: ClassVar[str] = ""
    loader: ClassVar[str] = "pairs"
    geo_head: ClassVar[bool] = False  # offers +geo variants (the GASSL geo head)
    split_bn: ClassVar[bool] = False  # uses shuffle-BN sub-batches in one process (bn_splits auto)
    backbone_prefix: ClassVar[str] = "encoder."
    summary: ClassVar[str] = ""  # model-card text of the plain method
    options: ClassVar[type | None] = None

    def variants(self) -> list[Method]:
        """The method names this family registers."""
        geo = (False, True) if self.geo_head else (False,)
        return [
            Method(self.name + ("+geo" if g else "") + ("+tp" if t else ""), self, temporal=t, geo=g)
            for g in geo
            for t in (False, True)
        ]

    def describe(self, method: Method) -> str:
        extra = []
        if method.geo:
            extra.append(
                "plus a geo-location pretext loss (predict the K-means cluster of the image's coordinates)"
            )
        if method.temporal:
            extra.append("with temporal positives (two images of one location taken at different times)")
        return "; ".join([self.summary, *extra])

    def section(self, cfg: Any) -> Any:
        """The family's options (its config section) from `cfg`, defaults filled in; None without options."""
        if self.options is None:
            return None
        given = getattr(cfg, "method_options", {}) or {}
        names = {f.name for f in dataclasses.fields(self.options)}
        return self.options(**{k: v for k, v in given.items() if k in names})

    def build(self, cfg: Any, method: Method, n_clusters: int, bn_splits: int) -> nn.Module:
        """The task module: forward(*inputs) -> (loss, stats with "loss" and "q_std"), `backbone` property."""
        raise NotImplementedError

    def check(self, cfg: Any, method: Method, world_size: int) -> str | None:
        """The first impossible setting for this family, as a message (None: all fine)."""
        return None

    def advice(self, cfg: Any, samples_per_epoch: int) -> str | None:
        """A warning about a legal but doubtful setting, once the epoch size is known (None: nothing)."""
        return None

    def on_step(self, cfg: Any, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after every optimiser step (step = steps done so far), e.g. for a momentum schedule."""

    def inputs(
        self, method: Method, batch: dict, device: torch.device, channels_last: bool, n_clusters: int = 0
    ) -> tuple:
        """The model's forward arguments from one loader batch, on `device`.

        uint8 images (the loader's output="uint8") are normalised on the device after the move, into the
        same float32 values the float output holds. Pairs: (q, k, geo cluster); views: (views,)."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if self.loader == "views":
            return (images_to(batch["views"], device, torch.contiguous_format),)
        q, k, geo = batch["q"], batch["k"], batch["geo_cluster"]
        if method.geo and n_clusters:
            check_cluster_ids(geo, batch.get("key"), n_clusters)
        return (images_to(q, device, fmt), images_to(k, device, fmt), geo.to(device, non_blocking=True))


def images_to(images: torch.Tensor, device: torch.device, fmt: torch.memory_format) -> torch.Tensor:
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
