"""DeepLab's atrous spatial pyramid pooling with an image-pooling branch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import SimpleASPP
from monai.networks.layers import Pool

from medseg.nets.blocks import ACT, NORM, conv_norm_act


class ASPP(nn.Module):
    """MONAI's SimpleASPP (a 1x1 and three dilated 3x3 branches) plus global average pooling
    (image-level context), concatenated and fused by a 1x1 conv-norm-activation."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 rates: Sequence[int] = (2, 4, 6)):
        super().__init__()
        branch = max(1, out_channels // 4)
        self.pyramid = SimpleASPP(spatial_dims, in_channels, branch, kernel_sizes=(1, 3, 3, 3),
                                  dilations=(1, *rates), norm_type=NORM, acti_type=ACT)
        # No norm after pooling: a 1-voxel map has no spatial statistics to normalise.
        self.image_pool = nn.Sequential(
            Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
            conv_norm_act(spatial_dims, in_channels, branch, 1, norm=None))
        self.project = conv_norm_act(spatial_dims, 5 * branch, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-rate context features at x's resolution."""
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([self.pyramid(x), pooled], dim=1))
