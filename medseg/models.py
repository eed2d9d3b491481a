"""The model registry: one name -> one builder, each taking spatial_dims and channel counts."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn


def build_unet(spatial_dims: int, in_channels: int, out_channels: int,
               channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
               num_res_units: int = 1, norm: str = "instance", dropout: float = 0.0) -> nn.Module:
    """MONAI's residual U-Net."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
                norm=norm, dropout=dropout)


def _unet3d(in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    return build_unet(3, in_channels, out_channels, **kwargs)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet3d": _unet3d,
}


def build_model(name: str, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """Instantiate a registered model; unknown names list the valid ones."""
    from medseg.errors import MedsegError

    if name not in MODELS:
        raise MedsegError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](in_channels=in_channels, out_channels=out_channels, **kwargs)
    except TypeError as exc:
        raise MedsegError(f"model {name!r}: bad settings ({exc})") from None


def downsampling_factor(model_kwargs: dict) -> int:
    """How many times the deepest level is downsampled: patch sizes must be multiples of it."""
    factor = 1
    for stride in model_kwargs.get("strides", (2, 2, 2, 2)):
        factor *= stride
    return factor
