"""The upsampling operators and dilated convolution against answers computed another way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medseg.nets.blocks import conv_norm_act
from medseg.nets.upsample import bed_of_nails, make_upsample, max_unpool, nearest

SHAPES = {2: (1, 2, 3, 4), 3: (1, 2, 3, 4, 2)}


def every_other(dims: int, offset: int = 0) -> tuple:
    """Index of positions offset, offset + 2, ... along every spatial axis."""
    return (..., *[slice(offset, None, 2)] * dims)


@pytest.mark.parametrize("dims", [2, 3])
def test_nearest_copies_each_value_into_its_block(dims):
    x = torch.randn(SHAPES[dims])
    expected = x
    for axis in range(2, 2 + dims):
        expected = expected.repeat_interleave(2, dim=axis)
    torch.testing.assert_close(nearest(x), expected)


@pytest.mark.parametrize("dims", [2, 3])
def test_bed_of_nails_puts_values_at_stride_positions_and_zeros_elsewhere(dims):
    x = torch.randn(SHAPES[dims])
    out = bed_of_nails(x)
    assert out.shape[2:] == tuple(2 * s for s in x.shape[2:])
    torch.testing.assert_close(out[every_other(dims)], x)
    nails = torch.zeros_like(out, dtype=torch.bool)
    nails[every_other(dims)] = True
    assert not out[~nails].any()


@pytest.mark.parametrize("dims", [2, 3])
def test_max_unpooling_restores_values_at_the_argmax_positions(dims):
    x = torch.randn(1, 2, *[4] * dims)
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    pooled, indices = pool(x, 2, return_indices=True)
    out = max_unpool(pooled, indices)
    # Oracle: a voxel keeps its value iff it is the maximum of its 2x2(x2) block.
    block_max = nearest(pooled)
    torch.testing.assert_close(out, torch.where(x == block_max, x, torch.zeros_like(x)))


@pytest.mark.parametrize("dims", [2, 3])
def test_transposed_convolution_is_the_adjoint_of_the_strided_convolution(dims):
    up = make_upsample("transpose", dims, 3, 5, pooled_channels=None).conv
    torch.nn.init.zeros_(up.bias)  # the adjoint relation holds for the linear part
    conv = F.conv2d if dims == 2 else F.conv3d
    fine = torch.randn(2, 5, *[6] * dims, dtype=torch.float64)
    coarse = torch.randn(2, 3, *[3] * dims, dtype=torch.float64)
    weight = up.weight.double()
    # <conv(x), y> == <x, conv_transpose(y)> with the same weights, stride 2.
    lhs = (conv(fine, weight, stride=2) * coarse).sum()
    rhs = (fine * up.double()(coarse)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("rate", [1, 2, 3])
def test_dilated_convolution_taps_every_rate_th_neighbour(rate):
    block = conv_norm_act(1, 1, 1, kernel_size=3, dilation=rate, norm=None)
    conv = block.conv  # the convolution as the networks build it, before its activation
    torch.nn.init.zeros_(conv.bias)
    w = conv.weight.detach()[0, 0]
    x = torch.randn(1, 1, 11)
    got = conv(x)[0, 0].detach()
    padded = F.pad(x[0, 0], (rate, rate))  # 'same' padding: zeros beyond the ends
    # y[i] = sum_k x[i + r*k] w[k] over the padded signal
    expected = torch.stack([sum(padded[i + rate * k] * w[k] for k in range(3))
                            for i in range(11)])
    torch.testing.assert_close(got, expected)
