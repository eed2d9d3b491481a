"""DeepLabv3+ (Chen et al. 2018): DeepLabv3 plus a decoder that fuses stride-4 features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.nets.aspp import ASPP
from medseg.nets.blocks import classifier, conv_block, conv_norm_act, resize_like
from medseg.nets.encoder import Encoder
from medseg.nets.upsample import make_upsample

LOW_LEVEL = 2  # encoder stage at stride 4, as in the paper


class DeepLabV3Plus(nn.Module):
    """ASPP features upsampled 2x per step (chosen operator) to stride 4, concatenated with the
    projected stride-4 encoder features, two 3x3 convs, 1x1 classifier, interpolated 4x."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (8, 16, 32, 64, 128, 128), output_stride: int = 8,
                 aspp_channels: int = 64, atrous_rates: Sequence[int] = (2, 4, 6),
                 low_level_channels: int = 32, upsample: str = "linear"):
        super().__init__()
        self.encoder = Encoder(spatial_dims, in_channels, channels, output_stride, residual=True)
        self.stride = self.encoder.stride
        self.aspp = ASPP(spatial_dims, channels[-1], aspp_channels, atrous_rates)
        pooled_stages = self.stride.bit_length() - 1
        self.steps = range(pooled_stages, LOW_LEVEL, -1)  # pooled stages to undo, deepest first
        self.ups = nn.ModuleList(
            make_upsample(upsample, spatial_dims, aspp_channels, aspp_channels, channels[i - 1])
            for i in self.steps)
        self.low_level = conv_norm_act(spatial_dims, channels[LOW_LEVEL], low_level_channels, 1)
        self.fuse = conv_block(spatial_dims, aspp_channels + low_level_channels, aspp_channels)
        self.head = classifier(spatial_dims, aspp_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the input's size."""
        features, indices = self.encoder(x)
        y = self.aspp(features[-1])
        for stage, up in zip(self.steps, self.ups):
            y = up(y, indices[stage - 1])
        y = self.fuse(torch.cat([y, self.low_level(features[LOW_LEVEL])], dim=1))
        return resize_like(self.head(y), x)
