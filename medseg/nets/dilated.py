"""Yu & Koltun's dilated network: a front end that stops downsampling early, a context module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from medseg.nets.blocks import classifier, conv_norm_act, resize_like
from medseg.nets.encoder import Encoder

PAPER_DILATIONS = (1, 1, 2, 4, 8, 16, 1)


def scaled_dilations(dilations: Sequence[int], scale: float) -> list[int]:
    """The context module's rates scaled to the feature map size (at least 1 each)."""
    return [max(1, round(rate * scale)) for rate in dilations]


class DilatedNet(nn.Module):
    """Front end pooled to `output_stride` then dilated, a 1x1 projection to context_channels, a
    context module of dilated 3x3 convs, a 1x1 classifier and (bi/tri)linear interpolation to
    the input size: no decoder. (The paper's context module is narrow too: C to 32C maps.)

    The paper's rates 1, 1, 2, 4, 8, 16, 1 suit feature maps about 64 wide; the default CT patch
    (80 x 64 x 48) gives 10 x 8 x 6 at stride 8, so dilation_scale 1/4 makes them 1, 1, 1, 1,
    2, 4, 1: a 23-voxel receptive field that still spans the whole map.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (8, 16, 32, 64, 128, 128), output_stride: int = 8,
                 dilations: Sequence[int] = PAPER_DILATIONS, dilation_scale: float = 0.25,
                 context_channels: int = 64):
        super().__init__()
        self.encoder = Encoder(spatial_dims, in_channels, channels, output_stride)
        self.stride = self.encoder.stride
        width = context_channels
        self.context = nn.Sequential(
            conv_norm_act(spatial_dims, channels[-1], width, kernel_size=1),
            *(conv_norm_act(spatial_dims, width, width, dilation=rate)
              for rate in scaled_dilations(dilations, dilation_scale)))
        for layer in self.context[1:]:  # identity initialisation, as the paper trains it
            nn.init.dirac_(layer.conv.weight)
        self.head = classifier(spatial_dims, width, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the input's size."""
        features, _ = self.encoder(x)
        return resize_like(self.head(self.context(features[-1])), x)
