"""The model registry: one name -> one network class, each built for 2D or 3D by spatial_dims."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch.nn as nn

from medseg.errors import MedsegError
from medseg.nets.deeplabv3 import DeepLabV3
from medseg.nets.deeplabv3plus import DeepLabV3Plus
from medseg.nets.dilated import DilatedNet
from medseg.nets.fcn import FCN
from medseg.nets.pad import PadToMultiple
from medseg.nets.pspnet import PSPNet
from medseg.nets.slicewise import SliceWise
from medseg.nets.unet import UNet


def monai_residual_unet(spatial_dims: int, in_channels: int, out_channels: int,
                        channels: Sequence[int] = (16, 32, 64, 128, 256), strides=None,
                        num_res_units: int = 1, norm: str = "instance",
                        dropout: float = 0.0) -> nn.Module:
    """MONAI's residual U-Net (strided convolutions down, transposed convolutions up)."""
    from monai.networks.nets import UNet as MonaiUNet

    strides = [s if isinstance(s, int) else tuple(s) for s in strides or [2] * (len(channels) - 1)]
    net = MonaiUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                    channels=tuple(channels), strides=strides, num_res_units=num_res_units,
                    norm=norm, dropout=dropout)
    # Per axis: planned networks pool a short axis fewer times (strides like (2, 2, 1)).
    per_level = [(s,) * spatial_dims if isinstance(s, int) else s for s in strides]
    net.stride = tuple(math.prod(level[a] for level in per_level) for a in range(spatial_dims))
    return net


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    # medseg 0.1's only model; its checkpoints and the demo use this name, so it stays as it was.
    "unet3d": monai_residual_unet,
    "fcn": FCN,
    "dilated": DilatedNet,
    "deeplabv3": DeepLabV3,
    "deeplabv3plus": DeepLabV3Plus,
    "pspnet": PSPNet,
}


def build_model(name: str, in_channels: int, out_channels: int, spatial_dims: int = 3,
                **kwargs) -> PadToMultiple:
    """A registered network for 2D or 3D inputs of any size; unknown names list the valid ones."""
    if name not in MODELS:
        raise MedsegError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if spatial_dims not in (2, 3):
        raise MedsegError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
    try:
        net = MODELS[name](spatial_dims=spatial_dims, in_channels=in_channels,
                           out_channels=out_channels, **kwargs)
    except TypeError as exc:
        raise MedsegError(f"model {name!r}: bad settings ({exc})") from None
    return PadToMultiple(net, net.stride)


def volume_model(model: nn.Module, spatial_dims: int, context_slices: int = 0,
                 pad_value: float | None = None) -> nn.Module:
    """A model that maps (B, 1, X, Y, Z) volumes to logits: 2D models run slice by slice."""
    return model if spatial_dims == 3 else SliceWise(model, context_slices, pad_value=pad_value)
