"""2D-mode sampling: slabs of neighbouring slices become channels, in slice order."""

from __future__ import annotations

import torch

from medseg.data.network_input import NetworkInput
from medseg.data.transforms import SlicesToChannelsd

INTENSITY = {"clip": [-1000.0, 300.0], "mean": 50.0, "std": 200.0}


def test_sample_size_is_the_patch_in_3d_and_a_thin_slab_in_2d():
    def size(dims, k=0):
        return NetworkInput((4, 4, 4), INTENSITY, (80, 64, 48), dims, k).sample_size

    assert size(3) == (80, 64, 48)
    assert size(2) == (80, 64, 1)
    assert size(2, k=2) == (80, 64, 5)


def test_slab_slices_become_channels_in_order_and_the_label_is_the_centre_slice():
    z = torch.arange(5.0).expand(1, 4, 3, 5)  # voxel value = its slice index
    out = SlicesToChannelsd(("image", "label"))({"image": z, "label": z.long() * 10})
    assert out["image"].shape == (5, 4, 3)
    assert out["image"][:, 0, 0].tolist() == [0, 1, 2, 3, 4]  # channel c = slice z-K+c
    assert out["label"].shape == (1, 4, 3) and (out["label"] == 20).all()
