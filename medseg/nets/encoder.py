"""The encoder every network starts from: conv stages, max pooling, then atrous convolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import Pool

from medseg.nets.blocks import conv_block


class Encoder(nn.Module):
    """Conv stages at strides 1, 2, 4, ... until `output_stride`, then dilation 2, 4, ... instead.

    Downsampling is 2x max pooling whose indices are kept, so any decoder can unpool (SegNet).
    Stages past the output stride keep the resolution and widen their view by dilation, as
    DeepLab's and Yu & Koltun's encoders do.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int],
                 output_stride: int | None = None, residual: bool = False):
        super().__init__()
        output_stride = output_stride or 2 ** (len(channels) - 1)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, return_indices=True)
        self.pooled, stages, self.stride, dilation = [], [], 1, 1
        for i, width in enumerate(channels):
            pooled = 0 < i and self.stride < output_stride
            self.stride *= 2 if pooled else 1
            dilation *= 2 if (i and not pooled) else 1
            self.pooled.append(pooled)
            stages.append(conv_block(spatial_dims, channels[i - 1] if i else in_channels, width,
                                     dilation, residual))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every stage's features (full resolution first) and indices[i]: how features[i] pooled."""
        features, indices = [], []
        for stage, pooled in zip(self.stages, self.pooled):
            if pooled:
                x, where = self.pool(x)
                indices.append(where)
            x = stage(x)
            features.append(x)
        return features, indices
