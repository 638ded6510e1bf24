"""torchvision ResNet backbones: build one, read its pooled features, tell its depth from a state_dict."""

from __future__ import annotations

import functools

import torch
import torchvision
from torch import nn

from geo_ssl.pipeline.common.errors import GeoSSLError
from geo_ssl.training.models.shuffle_bn import SplitBatchNorm

#: Depths we accept, with the number of residual blocks in layer3 that tells them apart in a state_dict.
ARCHS: dict[str, tuple[str, int]] = {
    "resnet18": ("basic", 2),
    "resnet34": ("basic", 6),
    "resnet50": ("bottleneck", 6),
    "resnet101": ("bottleneck", 23),
    "resnet152": ("bottleneck", 36),
}


def build_resnet(arch: str, num_classes: int = 1000, bn_splits: int = 1) -> torchvision.models.ResNet:
    """A randomly initialised torchvision ResNet; bn_splits > 1 swaps in SplitBatchNorm (same keys)."""
    if arch not in ARCHS:
        raise GeoSSLError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    norm_layer = functools.partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else None
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, norm_layer=norm_layer)


def feature_dim(resnet: torchvision.models.ResNet) -> int:
    """Width of the pooled features (512 for ResNet-18/34, 2048 for ResNet-50 and deeper)."""
    return resnet.layer4[-1].expansion * 512


def backbone_features(resnet: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled features (N x feature_dim), i.e. everything before `fc`."""
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    x = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))
    return torch.flatten(resnet.avgpool(x), 1)


class FeatureExtractor(nn.Module):
    """A ResNet seen as its pooled-feature function, for kNN and the linear probe."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.resnet = resnet
        self.dim = feature_dim(resnet)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return backbone_features(self.resnet, x)


def infer_arch(state_dict: dict[str, torch.Tensor]) -> str:
    """The torchvision ResNet depth that a backbone state_dict (no prefix) belongs to."""
    kind = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("layer3.")}
    for arch, (k, n) in ARCHS.items():
        if k == kind and len(blocks) == n:
            return arch
    raise GeoSSLError(f"state_dict matches no torchvision ResNet ({kind} blocks, layer3 has {len(blocks)})")
