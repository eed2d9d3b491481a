"""Contract for every registry entry in 2D and 3D: shape kept, every weight trained, it learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import MedsegError
from medseg.nets.registry import NETWORKS, build_network, monai_residual_unet
from medseg.nets.slicewise import SliceWise
from medseg.nets.upsample import UPSAMPLERS
from medseg.training.losses import build_loss

TINY = {"channels": (4, 4, 8, 8, 16)}


def tiny_nnunet(dims: int) -> dict:
    """A small nnU-Net plan architecture (what --init-from brings for the 'nnunet' entry)."""
    kind = f"{dims}d"
    return {"architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3, "features_per_stage": [4, 8, 16],
            "conv_op": f"torch.nn.modules.conv.Conv{kind}",
            "kernel_sizes": [[3] * dims] * 3, "strides": [[1] * dims, [2] * dims, [2] * dims],
            "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1],
            "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{kind}",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}


def tiny(name: str, dims: int) -> dict:
    return tiny_nnunet(dims) if name == "nnunet" else TINY
SIZES = {2: (20, 27), 3: (12, 20, 18)}  # multiples of no network's stride
DECODERS = ("unet", "fcn", "deeplabv3plus")  # the models with a choice of upsampling


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run faster on one thread, and do not fight other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_batch(dims: int, in_channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images that vary smoothly enough for a stride-32 model, labelled by intensity band."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(2, 1, *[2] * dims, generator=g)
    field = F.interpolate(coarse, size=SIZES[dims], mode="bilinear" if dims == 2 else "trilinear",
                          align_corners=True)
    field = (field - field.mean()) / field.std()
    label = (field > -0.4).long() + (field > 0.4).long()
    return field.repeat(1, in_channels, *[1] * dims), label


def untrained(model: torch.nn.Module) -> list[str]:
    """Parameters that the last backward pass gave no gradient."""
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_model_keeps_shape_trains_every_weight_and_overfits_a_batch(name, dims):
    torch.manual_seed(0)
    in_channels = 3 if dims == 2 else 1  # 2D as used in 2.5D mode: slice and neighbours
    model = build_network(name, in_channels, 3, spatial_dims=dims, **tiny(name, dims))
    image, label = smooth_batch(dims, in_channels)
    model.eval()
    with torch.no_grad():
        assert model(image).shape == (2, 3, *SIZES[dims])
    model.train()
    loss_fn = build_loss("ce")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(60):
        loss = loss_fn(model(image), label)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            # nnU-Net's network keeps an output head per decoder stage for deep supervision;
            # without it (as nnU-Net predicts, and medseg trains it) only the last one is used.
            heads = {f"net.decoder.seg_layers.{i}.{p}" for i in range(2) for p in ("weight",
                                                                                "bias")}
            assert not set(untrained(model)) - (heads if name == "nnunet" else set())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4, f"{name} {dims}D: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("upsample", list(UPSAMPLERS))
@pytest.mark.parametrize("name", DECODERS)
def test_every_upsampling_operator_fits_every_decoder(name, upsample, dims):
    model = build_network(name, 1, 3, spatial_dims=dims, upsample=upsample, **TINY)
    image, label = smooth_batch(dims)
    out = model(image)
    assert out.shape == (2, 3, *SIZES[dims])
    build_loss()(out, label).backward()
    assert not untrained(model)


def test_plain_unet_blocks_are_an_option():
    model = build_network("unet", 1, 3, spatial_dims=2, residual=False, **TINY)
    image, label = smooth_batch(2)
    build_loss()(model(image), label).backward()
    assert not untrained(model)
    assert not any("residual" in name for name, _ in model.named_parameters())


def test_deep_supervision_returns_halving_outputs_in_training_only():
    model = build_network("unet", 1, 3, spatial_dims=3, deep_supervision=True, **TINY)
    image, label = smooth_batch(3)
    outputs = model(image)
    assert [tuple(o.shape[2:]) for o in outputs] == [(12, 20, 18), (6, 10, 9), (3, 5, 5),
                                                     (2, 3, 3)]
    build_loss()(outputs, label).backward()
    assert not untrained(model)
    model.eval()
    assert model(image).shape == (2, 3, 12, 20, 18)


def test_bad_names_and_settings_say_what_is_valid():
    with pytest.raises(MedsegError, match="resunet, unet, fcn, dilated, deeplabv3"):
        build_network("segformer", 1, 2)
    with pytest.raises(MedsegError, match="transpose, nearest, linear, bed_of_nails, unpool"):
        build_network("unet", 1, 2, upsample="bicubic")
    with pytest.raises(MedsegError, match="'pspnet': bad settings.*upsample"):
        build_network("pspnet", 1, 2, upsample="nearest")
    with pytest.raises(MedsegError, match="2 or 3"):
        build_network("unet", 1, 2, spatial_dims=1)


def test_bare_network_weights_load_into_the_padding_wrapper():
    # medseg 0.1 saved MONAI's U-Net unwrapped; those checkpoints must still load.
    bare = monai_residual_unet(3, 1, 2, channels=(4, 8))
    model = build_network("unet3d", 1, 2, channels=(4, 8))
    model.load_state_dict(bare.state_dict())
    x = torch.randn(1, 1, 8, 8, 8)
    bare.eval(), model.eval()
    torch.testing.assert_close(model(x), bare(x))


def test_slicewise_feeds_each_slice_with_its_neighbours_as_channels():
    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    volume = torch.randn(2, 1, 6, 5, 7)
    got = SliceWise(net, context_slices=1, slices_per_batch=4)(volume)
    padded = torch.cat([volume[..., :1], volume, volume[..., -1:]], dim=-1)
    for z in range(7):
        stack = padded[:, 0, :, :, z:z + 3].permute(0, 3, 1, 2)  # slices z-1, z, z+1
        torch.testing.assert_close(got[..., z], net(stack))
