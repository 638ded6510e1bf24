"""Hand-made image features: the ablation's no-learning reference rows (benchmark references, not product).

A reviewer's question about the toy ablation is whether 500 steps of SSL learn more than a fixed,
hand-written descriptor. These modules take the eval loader's batches (ImageNet-normalised float images,
the same Resize + CenterCrop the arms are evaluated on), undo the normalisation and compute:

- `OrientationHistogram`: 48 numbers = 12 unsigned gradient-orientation bins (15 degrees each, 0-180)
  x 2 x 2 spatial cells, each pixel voting its Sobel gradient magnitude on the grey image (HOG-like,
  hard binning, no block overlap);
- `ColourHistogram`: 64 numbers = a joint 4 x 4 x 4 RGB histogram (each channel cut into quarters of
  0-1), the fraction of pixels per bin.

Both are L2-normalised per image (HOG's convention), so kNN's cosine and the linear probe see unit-length
vectors. They have no parameters and no training: they go through exactly the arms' kNN and probes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geo_ssl.training.data.augment import IMAGENET_MEAN, IMAGENET_STD

#: Orientation bins and spatial cells per side of the gradient histogram (12 x 2 x 2 = 48 numbers).
ORIENTATION_BINS, CELLS = 12, 2
#: Levels per channel of the joint colour histogram (4 x 4 x 4 = 64 numbers).
COLOUR_LEVELS = 4


def unnormalise(images: torch.Tensor) -> torch.Tensor:
    """RGB in 0-1 from the eval loader's ImageNet-normalised batch (B x 3 x H x W)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


class OrientationHistogram(nn.Module):
    """Magnitude-weighted gradient-orientation histogram, 12 bins x 2 x 2 cells = 48 numbers per image."""

    dim = ORIENTATION_BINS * CELLS * CELLS

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = unnormalise(images.float())
        grey = (rgb * torch.tensor([0.299, 0.587, 0.114], device=rgb.device).view(1, 3, 1, 1)).sum(1, True)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=rgb.device)
        kernels = torch.stack([sobel, sobel.T]).unsqueeze(1)  # d/dx, d/dy
        grad = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
        gx, gy = grad[:, 0], grad[:, 1]
        angle = torch.atan2(gy, gx).remainder(torch.pi)  # unsigned orientation in [0, pi)
        bins = (angle / torch.pi * ORIENTATION_BINS).long().clamp(0, ORIENTATION_BINS - 1)
        votes = F.one_hot(bins, ORIENTATION_BINS).permute(0, 3, 1, 2) * torch.hypot(gx, gy).unsqueeze(1)
        cells = F.adaptive_avg_pool2d(votes, CELLS)  # B x bins x cells x cells
        return F.normalize(cells.flatten(1), dim=1)


class ColourHistogram(nn.Module):
    """Joint RGB histogram, 4 levels per channel = 64 numbers per image (fraction of pixels, then L2)."""

    dim = COLOUR_LEVELS**3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = unnormalise(images.float())
        levels = (rgb * COLOUR_LEVELS).long().clamp(0, COLOUR_LEVELS - 1)  # B x 3 x H x W
        joint = (levels[:, 0] * COLOUR_LEVELS + levels[:, 1]) * COLOUR_LEVELS + levels[:, 2]
        counts = F.one_hot(joint.flatten(1), self.dim).float().mean(1)
        return F.normalize(counts, dim=1)


#: The reference rows of the ablation table, by row name.
HANDMADE = {
    "orientation histogram (48, hand-made)": OrientationHistogram,
    "colour histogram (64, hand-made)": ColourHistogram,
}
