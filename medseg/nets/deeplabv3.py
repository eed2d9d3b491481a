"""DeepLabv3 (Chen et al. 2017): atrous residual encoder, ASPP, no decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.nets.aspp import ASPP
from medseg.nets.blocks import classifier, resize_like
from medseg.nets.encoder import Encoder


class DeepLabV3(nn.Module):
    """Residual encoder pooled to output_stride (8 or 16) with atrous last stages, ASPP, a 1x1
    classifier and (bi/tri)linear interpolation to the input size."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (8, 16, 32, 64, 128, 128), output_stride: int = 8,
                 aspp_channels: int = 64, atrous_rates: Sequence[int] = (2, 4, 6)):
        super().__init__()
        self.encoder = Encoder(spatial_dims, in_channels, channels, output_stride, residual=True)
        self.stride = self.encoder.stride
        self.aspp = ASPP(spatial_dims, channels[-1], aspp_channels, atrous_rates)
        self.head = classifier(spatial_dims, aspp_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the input's size."""
        features, _ = self.encoder(x)
        return resize_like(self.head(self.aspp(features[-1])), x)
