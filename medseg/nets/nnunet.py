"""nnU-Net's networks (dynamic_network_architectures), built from a plan's description as data,
and moved into medseg's working frame so medseg can fine-tune them.

A plan names the network class and the torch layers it uses by dotted path; both come from
allowlists here, so a plan cannot make medseg import or run anything else.

nnU-Net feeds a network the voxel array as SimpleITK reads the file (axes k, j, i of the stored
grid), permuted by the plan's transpose_forward. A CT stored as DICOM stores it has i towards
the patient's left, j posterior and k superior (LPS), so nnU-Net's network axes are LPS's x, y,
z in some order. medseg keeps its arrays in x, y, z order and fine-tunes such a model in the
LPS frame: only the order of the kernels' axes changes (`weights_in_xyz`), which is exact.
Mirroring kernels to work in RAS instead is not: a stride-2 convolution of a mirrored input
samples other voxels, and the fixture model's foreground labels then agreed on only 76% of
voxels with its own output.
"""

from __future__ import annotations

import copy
import importlib
import math

import torch

from medseg.errors import MedsegError, first_line

# The networks nnU-Net's planners write into plans.json (dynamic_network_architectures).
NETWORK_CLASSES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
# Torch layers a plan may name by dotted path (its _kw_requires_import entries).
TORCH_LAYERS = {
    f"torch.nn.{name}": f"torch.nn.{name.split('.')[-1]}" for name in (
        "modules.conv.Conv2d", "modules.conv.Conv3d", "Conv2d", "Conv3d",
        "modules.instancenorm.InstanceNorm2d", "modules.instancenorm.InstanceNorm3d",
        "InstanceNorm2d", "InstanceNorm3d",
        "modules.batchnorm.BatchNorm2d", "modules.batchnorm.BatchNorm3d", "BatchNorm2d",
        "BatchNorm3d", "modules.dropout.Dropout2d", "modules.dropout.Dropout3d", "Dropout2d",
        "Dropout3d", "LeakyReLU", "ReLU", "modules.activation.LeakyReLU",
        "modules.activation.ReLU")
}
# arch_kwargs holding one entry per spatial axis per stage.
PER_AXIS = ("kernel_sizes", "strides")


def torch_layer(dotted: str, where: str):
    """An allowlisted torch layer class from its dotted path; `where` names the plan."""
    if dotted not in TORCH_LAYERS:
        raise MedsegError(f"{where}: names the layer {dotted!r}, which medseg does not build "
                          "(it imports only known torch layers from a plan)")
    module_name, name = TORCH_LAYERS[dotted].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), name)


def build_plan_network(architecture: dict, in_channels: int, out_channels: int,
                       where: str) -> torch.nn.Module:
    """A plan's network (no deep supervision) from its 'architecture' entry."""
    class_path = architecture.get("network_class_name")
    if class_path not in NETWORK_CLASSES:
        raise MedsegError(f"{where}: network {class_path!r} is not one medseg builds (it knows "
                          f"{', '.join(sorted(NETWORK_CLASSES))})")
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            kwargs[key] = torch_layer(kwargs[key], where)
    module_name, class_name = class_path.rsplit(".", 1)
    try:
        network_class = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        raise MedsegError(f"{where}: nnU-Net models need dynamic_network_architectures; install "
                          "it with `pip install 'medseg[nnunet]'` (keep your torch: add "
                          "`-c constraints.txt` naming it, see README)") from None
    try:
        return network_class(input_channels=in_channels, num_classes=out_channels,
                             deep_supervision=False, **kwargs)
    except TypeError as exc:
        raise MedsegError(f"{where}: the network's arguments do not fit {class_name} ({exc}); "
                          "this plan needs another version of dynamic_network_architectures"
                          ) from None
    except (AssertionError, ValueError, IndexError, RuntimeError) as exc:  # values, not names
        shown = first_line(exc) or type(exc).__name__
        raise MedsegError(f"{where}: its architecture's arguments cannot build a {class_name} "
                          f"({shown}: n_stages, features_per_stage, kernel_sizes and strides "
                          "must agree); the plan is damaged: copy the model folder again"
                          ) from None


def nnunet_network(spatial_dims: int, in_channels: int, out_channels: int,
                   architecture: dict | None = None) -> torch.nn.Module:
    """The registry's 'nnunet' entry: an nnU-Net plan's network, its axes in x, y, z order
    (architecture_in_xyz), with the `stride` medseg pads inputs to."""
    if not isinstance(architecture, dict) or "arch_kwargs" not in architecture:
        raise MedsegError("the nnunet network is an imported nnU-Net model's: train it with "
                          "--init-from NNUNET_MODEL_FOLDER, which brings its architecture")
    strides = architecture["arch_kwargs"]["strides"]
    if any(len(s) != spatial_dims for s in strides):
        raise MedsegError(f"the nnU-Net network is {len(strides[0])}D, not {spatial_dims}D")
    network = build_plan_network(architecture, in_channels, out_channels, "the nnU-Net network")
    network.stride = tuple(math.prod(s[axis] for s in strides) for axis in range(spatial_dims))
    return network


def network_to_xyz(transpose_forward) -> list[int]:
    """For each of nnU-Net's network axes, the x, y, z axis (0, 1, 2) it runs along."""
    stored_to_xyz = [2, 1, 0]  # SimpleITK's array axes (k, j, i) are z, y, x
    return [stored_to_xyz[int(t)] for t in transpose_forward]


def in_xyz_order(values, transpose_forward) -> list:
    """Per-axis values of nnU-Net's network axes (spacing, patch size) in x, y, z order."""
    axes = network_to_xyz(transpose_forward)
    return [values[axes.index(axis)] for axis in range(3)]


def architecture_in_xyz(architecture: dict, transpose_forward) -> dict:
    """A plan's architecture with its per-axis kernel sizes and strides in x, y, z order."""
    moved = copy.deepcopy(architecture)
    for key in PER_AXIS:
        moved["arch_kwargs"][key] = [in_xyz_order(stage, transpose_forward)
                                     for stage in architecture["arch_kwargs"][key]]
    return moved


def weights_in_xyz(state_dict: dict, transpose_forward) -> dict:
    """An nnU-Net state dict for the network of architecture_in_xyz: the spatial axes of every
    3D kernel (out, in, then one per network axis) put in x, y, z order."""
    axes = network_to_xyz(transpose_forward)
    order = [2 + axes.index(axis) for axis in range(3)]
    return {name: tensor.permute(0, 1, *order).contiguous() if tensor.ndim == 5 else tensor
            for name, tensor in state_dict.items()}
