"""Run a network on inputs of any size by padding them up to a multiple of its stride."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class PadToMultiple(nn.Module):
    """Pad each spatial side (at its end, by edge replication) to a multiple, run, crop back.

    The multiple is one number, or one per axis (networks that pool some axes less).

    Pooling and strided layers need sides divisible by the network's total stride; patches and
    scans rarely are. Lists (deep supervision) are cropped level by level.
    """

    def __init__(self, net: nn.Module, multiple: int | tuple[int, ...]):
        super().__init__()
        self.net, self.multiple = net, multiple

    def forward(self, x: torch.Tensor):
        """The network's output for x, cut to x's spatial size (or its fraction, per level)."""
        size = x.shape[2:]
        multiples = ((self.multiple,) * len(size) if isinstance(self.multiple, int)
                     else self.multiple)
        pad = [-s % m for s, m in zip(size, multiples)]
        if any(pad):
            x = F.pad(x, [p for side in reversed(pad) for p in (0, side)], mode="replicate")
        out = self.net(x)
        if isinstance(out, (list, tuple)):
            return [crop(o, size, x.shape[2:]) for o in out]
        return crop(out, size, x.shape[2:])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accept the bare network's weights (medseg 0.1 checkpoints were saved unwrapped)."""
        if not any(key.startswith("net.") for key in state_dict):
            state_dict = {f"net.{key}": value for key, value in state_dict.items()}
        return super().load_state_dict(state_dict, strict, assign)


def crop(out: torch.Tensor, size, padded) -> torch.Tensor:
    """The part of an output (at any downsampling of the padded input) that covers the input."""
    keep = [math.ceil(s * o / p) for s, o, p in zip(size, out.shape[2:], padded)]
    return out[(..., *(slice(0, k) for k in keep))]
