"""The decoders' 2x upsampling operators, each a fixed or learned upsampling plus a convolution.

| name | operator |
|---|---|
| transpose | transposed convolution, kernel 2, stride 2 (learned) |
| nearest | nearest neighbour (each value copied 2x per axis), then a 3x3 convolution |
| linear | (bi/tri)linear interpolation, then a 3x3 convolution |
| bed_of_nails | zero insertion (each value at the even position, zeros between), then a 3x3 conv |
| unpool | max unpooling with the encoder's pooling indices, then a 3x3 convolution (SegNet) |
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import Conv

from medseg.errors import MedsegError


def nearest(x: torch.Tensor) -> torch.Tensor:
    """Double each spatial side by copying every value into a 2x2(x2) block."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def linear(x: torch.Tensor) -> torch.Tensor:
    """Double each spatial side by (bi/tri)linear interpolation."""
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)


def bed_of_nails(x: torch.Tensor) -> torch.Tensor:
    """Double each spatial side by zero insertion: x[i] goes to 2i, odd positions hold zeros."""
    out = x.new_zeros(*x.shape[:2], *(2 * s for s in x.shape[2:]))
    out[(..., *[slice(None, None, 2)] * (x.ndim - 2))] = x
    return out


def max_unpool(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Put every value back where the encoder's 2x max pooling found it; zeros elsewhere."""
    unpool = F.max_unpool2d if x.ndim == 4 else F.max_unpool3d
    return unpool(x, indices, kernel_size=2)


class TransposedConv(nn.Module):
    """Learned 2x upsampling: a transposed convolution with kernel 2 and stride 2."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 pooled_channels=None):
        super().__init__()
        self.conv = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Upsample x; pooling indices are not used."""
        return self.conv(x)


class ResizeConv(nn.Module):
    """A fixed 2x upsampling (nearest, linear, bed of nails) followed by a learned 3x3 conv."""

    def __init__(self, resize: Callable, spatial_dims: int, in_channels: int, out_channels: int,
                 pooled_channels=None):
        super().__init__()
        self.resize = resize
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Upsample x; pooling indices are not used."""
        return self.conv(self.resize(x))


class UnpoolConv(nn.Module):
    """SegNet's decoder step: 1x1 projection to the pooled map's channels, unpool, 3x3 conv."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 pooled_channels: int):
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        # Unpooling needs the channel count the encoder pooled; project only when it differs.
        self.project = (nn.Identity() if in_channels == pooled_channels
                        else conv(in_channels, pooled_channels, 1))
        self.conv = conv(pooled_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Upsample x to the positions the matching encoder pooling recorded."""
        return self.conv(max_unpool(self.project(x), indices))


UPSAMPLERS: dict[str, Callable[..., nn.Module]] = {
    "transpose": TransposedConv,
    "nearest": partial(ResizeConv, nearest),
    "linear": partial(ResizeConv, linear),
    "bed_of_nails": partial(ResizeConv, bed_of_nails),
    "unpool": UnpoolConv,
}


def make_upsample(mode: str, spatial_dims: int, in_channels: int, out_channels: int,
                  pooled_channels: int) -> nn.Module:
    """A 2x upsampling step `(x, indices) -> y`; pooled_channels: the encoder map it mirrors."""
    if mode not in UPSAMPLERS:
        raise MedsegError(f"unknown upsampling {mode!r}; choose one of: {', '.join(UPSAMPLERS)}")
    return UPSAMPLERS[mode](spatial_dims, in_channels, out_channels,
                            pooled_channels=pooled_channels)
