"""FCN-8s (Long, Shelhamer & Darrell): class scores at strides 32, 16 and 8, fused."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.nets.blocks import classifier, conv_norm_act, resize_like
from medseg.nets.encoder import Encoder
from medseg.nets.upsample import make_upsample


class FCN(nn.Module):
    """Encoder to stride 16, a pooled 'fully connected' pair as convolutions at stride 32, 1x1
    classifiers at strides 32, 16, 8; each coarser score map is upsampled 2x and added to the
    next, and the stride-8 sum is interpolated to the input size."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (8, 16, 32, 64, 128), fc_channels: int = 128,
                 upsample: str = "transpose"):
        super().__init__()
        self.encoder = Encoder(spatial_dims, in_channels, channels)
        self.stride = 2 * self.encoder.stride
        # fc6/fc7 as 3x3 and 1x1 convolutions; no norm: at stride 32 a map may be one voxel.
        self.fc = nn.Sequential(
            conv_norm_act(spatial_dims, channels[-1], fc_channels, 3, norm=None),
            conv_norm_act(spatial_dims, fc_channels, fc_channels, 1, norm=None))
        self.score32 = classifier(spatial_dims, fc_channels, out_channels)
        self.score16 = classifier(spatial_dims, channels[-1], out_channels)
        self.score8 = classifier(spatial_dims, channels[-2], out_channels)
        self.up32 = make_upsample(upsample, spatial_dims, out_channels, out_channels, channels[-1])
        self.up16 = make_upsample(upsample, spatial_dims, out_channels, out_channels, channels[-2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused class scores at the input's size."""
        features, indices = self.encoder(x)
        pooled, where = self.encoder.pool(features[-1])
        score = self.score32(self.fc(pooled))
        score = self.up32(score, where) + self.score16(features[-1])
        score = self.up16(score, indices[-1]) + self.score8(features[-2])
        return resize_like(score, x)

