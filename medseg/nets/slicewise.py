"""2D networks on volumes: every axial slice, with its neighbours as channels (2.5D)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SliceWise(nn.Module):
    """Map (B, 1, X, Y, Z) volumes to (B, C, X, Y, Z) logits with a 2D network, slice by slice.

    Slice z is fed with slices z-K..z+K as channels (K = context_slices). Beyond the volume's
    ends the neighbours are pad_value (air, as training pads them; medseg.data.network_input), or
    repeated end slices where pad_value is None (checkpoints from before that definition).
    Slices go through in batches.
    """

    def __init__(self, net: nn.Module, context_slices: int = 0, slices_per_batch: int = 32,
                 pad_value: float | None = None):
        super().__init__()
        self.net, self.context_slices = net, context_slices
        self.slices_per_batch, self.pad_value = slices_per_batch, pad_value

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """Logits for every slice of every volume in the batch."""
        b, _, x, y, z = volume.shape
        k = self.context_slices
        if self.pad_value is None:
            padded = F.pad(volume, (k, k, 0, 0, 0, 0), mode="replicate")
        else:
            padded = F.pad(volume, (k, k, 0, 0, 0, 0), value=self.pad_value)
        stacks = padded[:, 0].unfold(-1, 2 * k + 1, 1)  # (B, X, Y, Z, 2K+1)
        stacks = stacks.permute(0, 3, 4, 1, 2).reshape(b * z, 2 * k + 1, x, y)
        logits = torch.cat([self.net(part) for part in stacks.split(self.slices_per_batch)])
        return logits.reshape(b, z, -1, x, y).permute(0, 2, 3, 4, 1)
