"""The model registry: one name -> one network, each built for 2D or 3D by spatial_dims.

Light to import: each entry imports its network when called, so the command line lists the
names in --help without loading torch. To add a network: write it in medseg/nets/ (taking
spatial_dims, in_channels, out_channels and setting a `stride` attribute), add a builder below
and one entry to NETWORKS; tests/test_models.py runs its contract over every entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from medseg.errors import MedsegError

if TYPE_CHECKING:
    import torch.nn as nn


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


def unet(**kwargs) -> nn.Module:
    """U-Net: max pooling down, a chosen upsampling up, optional deep supervision."""
    from medseg.nets.unet import UNet

    return UNet(**kwargs)


def fcn(**kwargs) -> nn.Module:
    """FCN-8s: score maps at strides 32, 16 and 8, upsampled and summed."""
    from medseg.nets.fcn import FCN

    return FCN(**kwargs)


def dilated(**kwargs) -> nn.Module:
    """Yu & Koltun's dilated network: a stride-8 front end and a dilated context module."""
    from medseg.nets.dilated import DilatedNet

    return DilatedNet(**kwargs)


def deeplabv3(**kwargs) -> nn.Module:
    """DeepLab v3: an atrous residual encoder and ASPP."""
    from medseg.nets.deeplabv3 import DeepLabV3

    return DeepLabV3(**kwargs)


def deeplabv3plus(**kwargs) -> nn.Module:
    """DeepLab v3+: DeepLab v3 with a decoder fusing stride-4 encoder features."""
    from medseg.nets.deeplabv3plus import DeepLabV3Plus

    return DeepLabV3Plus(**kwargs)


def pspnet(**kwargs) -> nn.Module:
    """PSPNet: an atrous residual encoder and pyramid pooling."""
    from medseg.nets.pspnet import PSPNet

    return PSPNet(**kwargs)


def nnunet(**kwargs) -> nn.Module:
    """nnU-Net's U-Net as an nnU-Net plan describes it (`architecture`): what fine-tuning an
    imported nnU-Net model trains (medseg train --init-from)."""
    from medseg.nets.nnunet import nnunet_network

    return nnunet_network(**kwargs)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "resunet": monai_residual_unet,
    "unet": unet,
    "fcn": fcn,
    "dilated": dilated,
    "deeplabv3": deeplabv3,
    "deeplabv3plus": deeplabv3plus,
    "pspnet": pspnet,
    "nnunet": nnunet,
}
# Old names that still build their network, so checkpoints and recipes that use them load.
ALIASES = {"unet3d": "resunet"}  # medseg 0.1's only model, named before 2D training existed
DEFAULT_NETWORK = "resunet"


def known_network(name: str) -> bool:
    """Whether a name builds a network: a registered name or an old one (ALIASES)."""
    return ALIASES.get(name, name) in NETWORKS


def canonical_model(name: str) -> str:
    """A registered name, old names (ALIASES) turned into the current one."""
    name = ALIASES.get(name, name)
    if name not in NETWORKS:
        raise MedsegError(f"unknown model {name!r}; choose one of: {', '.join(NETWORKS)}")
    return name


def build_network(name: str, in_channels: int, out_channels: int, spatial_dims: int = 3,
                **kwargs) -> nn.Module:
    """A registered network for 2D or 3D inputs of any size; unknown names list the valid ones."""
    from medseg.nets.pad import PadToMultiple

    builder = NETWORKS[canonical_model(name)]
    if spatial_dims not in (2, 3):
        raise MedsegError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
    try:
        net = builder(spatial_dims=spatial_dims, in_channels=in_channels,
                      out_channels=out_channels, **kwargs)
    except TypeError as exc:
        raise MedsegError(f"model {name!r}: bad settings ({exc})") from None
    return PadToMultiple(net, net.stride)


def volume_network(model: nn.Module, spatial_dims: int, context_slices: int = 0,
                 pad_value: float | None = None) -> nn.Module:
    """A model that maps (B, 1, X, Y, Z) volumes to logits: 2D models run slice by slice."""
    if spatial_dims == 3:
        return model
    from medseg.nets.slicewise import SliceWise

    return SliceWise(model, context_slices, pad_value=pad_value)
