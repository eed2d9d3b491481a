"""PSPNet (Zhao et al. 2017): dilated residual encoder plus a pyramid pooling module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import Pool

from medseg.nets.blocks import classifier, conv_norm_act, resize_like
from medseg.nets.encoder import Encoder


class PyramidPooling(nn.Module):
    """Average-pool the map to b x b (x b) bins for each b, 1x1 conv, upsample, concatenate."""

    def __init__(self, spatial_dims: int, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        branch = max(1, in_channels // len(bins))
        # No norm after pooling: a 1-bin map has no spatial statistics to normalise.
        self.branches = nn.ModuleList(
            nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](b),
                          conv_norm_act(spatial_dims, in_channels, branch, 1, norm=None))
            for b in bins)
        self.out_channels = in_channels + branch * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x with every pyramid level's context appended as channels."""
        return torch.cat([x, *(resize_like(branch(x), x) for branch in self.branches)], dim=1)


class PSPNet(nn.Module):
    """Residual encoder with atrous last stages, pyramid pooling (bins 1, 2, 3, 6), a 3x3
    conv-norm-activation, a 1x1 classifier and interpolation to the input size."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (8, 16, 32, 64, 128, 128), output_stride: int = 8,
                 bins: Sequence[int] = (1, 2, 3, 6), fuse_channels: int = 64):
        super().__init__()
        self.encoder = Encoder(spatial_dims, in_channels, channels, output_stride, residual=True)
        self.stride = self.encoder.stride
        self.pyramid = PyramidPooling(spatial_dims, channels[-1], bins)
        self.fuse = conv_norm_act(spatial_dims, self.pyramid.out_channels, fuse_channels)
        self.head = classifier(spatial_dims, fuse_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the input's size."""
        features, _ = self.encoder(x)
        return resize_like(self.head(self.fuse(self.pyramid(features[-1]))), x)
