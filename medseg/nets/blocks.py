"""Convolution blocks shared by the networks: conv-norm-activation, plain (VGG) or residual."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit

# nnU-Net's choices: instance norm (works at batch size 1) and leaky ReLU.
NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


def conv_norm_act(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                  dilation: int = 1, norm=NORM) -> nn.Module:
    """One convolution ('same' padding), normalisation and activation; no bias before a norm."""
    return Convolution(spatial_dims, in_channels, out_channels, kernel_size=kernel_size,
                       dilation=dilation, act=ACT, norm=norm, bias=norm is None)


def conv_block(spatial_dims: int, in_channels: int, out_channels: int, dilation: int = 1,
               residual: bool = False) -> nn.Module:
    """Two 3x3 conv-norm-activation layers (VGG, U-Net), or MONAI's two-layer residual unit."""
    if residual:
        return ResidualUnit(spatial_dims, in_channels, out_channels, subunits=2, act=ACT,
                            norm=NORM, dilation=dilation, bias=False)
    return nn.Sequential(
        conv_norm_act(spatial_dims, in_channels, out_channels, dilation=dilation),
        conv_norm_act(spatial_dims, out_channels, out_channels, dilation=dilation))


def classifier(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A 1x1 convolution: per-voxel class scores, the convolutional form of a dense layer."""
    return Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, conv_only=True)


def resize_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(Bi/tri)linear interpolation of x to the spatial size of reference."""
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=reference.shape[2:], mode=mode, align_corners=False)
