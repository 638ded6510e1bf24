"""GASSL's +TP crop as an option of the MoCo-v2 augmentation (`--crop gassl`).

GASSL's temporal pipeline (main_moco_tp.py, main_moco_geo+tp.py) runs Resize(448), CenterCrop(448),
then RandomResizedCrop(224) at torchvision's default scale (0.08, 1), then the MoCo-v2 colour, blur and
flip steps. Resize + CenterCrop keeps the central square of the image (side = its shorter side, at any
resolution), so the same crop on a stored view is: RandomResizedCrop(scale 0.08-1) drawn inside the
view's central square, in stored pixels. The rest of the augmentation is geo-ssl's MoCo-v2 one, unchanged.

`--crop moco` (default) is MoCo-v2's `--aug-plus` crop, RandomResizedCrop(scale 0.2-1) over the whole
stored view, which is also GASSL's non-temporal (MoCo-V2, MoCo-V2+Geo) pipeline: its Resize(448) before
the crop only changes the resolution the crop is taken at, not which part of the image it covers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.data.augment import MocoV2Augment, ViewParams

CROPS = ("moco", "gassl")


@dataclass(frozen=True)
class GasslTpAugment(MocoV2Augment):
    """MoCo-v2 augmentation whose crop is drawn inside the central square, at scale 0.08-1 of it."""

    scale: tuple[float, float] = (0.08, 1.0)

    def sample(self, rng: random.Random, width: int, height: int) -> ViewParams:
        side = min(width, height)
        params = super().sample(rng, side, side)
        x, y, w, h = params.box
        return replace(params, box=(x + (width - side) / 2.0, y + (height - side) / 2.0, w, h))


def augment_for(crop: str, image_size: int, crop_scale: float = 0.0) -> MocoV2Augment:
    """The training augmentation for `--crop` (moco | gassl) at `image_size`, built once per run by the
    trainer (trainer/feed.py) and handed to the loader's workers and the GPU data path as one object.

    `crop_scale` > 0 replaces the crop's smallest area fraction (moco 0.2, gassl 0.08): small images
    (the 64 px toy ablation) keep more of the object in each crop with a larger one."""
    if not 0 <= crop_scale <= 1:
        raise GeoSSLError(f"crop_scale = {crop_scale} must be in (0, 1], or 0 for the crop's own")
    if crop not in CROPS:
        raise GeoSSLError(f"crop = {crop!r}; choose one of {', '.join(CROPS)}")
    aug = MocoV2Augment(image_size=image_size) if crop == "moco" else GasslTpAugment(image_size=image_size)
    return replace(aug, scale=(crop_scale, 1.0)) if crop_scale else aug
