"""nnU-Net's sliding window (nnunetv2's sliding_window_prediction and
predict_sliding_window_return_logits): padded to the patch if smaller, windows placed evenly
with step patch x (1 - overlap), weighted by a Gaussian (sigma 1/8 of the patch), mirrored
along the checkpoint's axes under TTA, folds' logits averaged."""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.runtime import autocast


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """nnU-Net's window positions along one axis: evenly spread, first at 0, last at the end."""
    count = int(math.ceil((size - patch) / (patch * step))) + 1
    if count == 1:
        return [0]
    stride = (size - patch) / (count - 1)
    return [int(np.round(stride * i)) for i in range(count)]


@lru_cache(maxsize=2)
def gaussian_weights(patch: tuple[int, ...]) -> torch.Tensor:
    """nnU-Net's importance map: a delta blurred with sigma patch/8, peak 10, no zeros."""
    delta = np.zeros(patch)
    delta[tuple(p // 2 for p in patch)] = 1
    weights = ndimage.gaussian_filter(delta, [p / 8 for p in patch], 0, mode="constant", cval=0)
    weights = torch.from_numpy(weights / weights.max() * 10).to(torch.float16).float()
    weights[weights == 0] = weights[weights > 0].min()
    return weights


def pad_to_patch(image: torch.Tensor, patch) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad axes smaller than the patch, evenly (nnU-Net's pad_nd_image)."""
    pads, keep = [], []
    for size, p in zip(image.shape, patch):
        extra = max(0, p - size)
        pads.append((extra // 2, extra - extra // 2))
        keep.append(slice(extra // 2, extra // 2 + size))
    if any(sum(p) for p in pads):
        image = F.pad(image, [v for pair in reversed(pads) for v in pair])
    return image, tuple(keep)


@torch.inference_mode()
def sliding_window_logits(network: torch.nn.Module, fold_weights: list[dict],
                          image: torch.Tensor, patch: tuple[int, ...], outputs: int, *,
                          overlap: float, batch_size: int, device: torch.device,
                          precision: str, mirror_axes: tuple[int, ...] = ()) -> torch.Tensor:
    """Fold-averaged, Gaussian-weighted sliding-window logits (outputs, *image.shape), float32
    on the CPU; `mirror_axes` (TTA) averages each window over its mirror images too."""
    padded, keep = pad_to_patch(image, patch)
    starts = [window_starts(s, p, 1.0 - overlap) for s, p in zip(padded.shape, patch)]
    windows = [tuple(slice(s, s + p) for s, p in zip(corner, patch))
               for corner in itertools.product(*starts)]
    gaussian = gaussian_weights(patch)
    total = None
    for weights in fold_weights:
        network.load_state_dict(weights)
        summed = torch.zeros((outputs, *padded.shape))
        counts = torch.zeros(padded.shape)
        batch = max(1, batch_size)
        for first in range(0, len(windows), batch):
            group = windows[first:first + batch]
            inputs = torch.stack([padded[w] for w in group])[:, None].to(device)
            with autocast(device, precision):
                results = mirrored(network, inputs, mirror_axes).float().cpu()
            for window, result in zip(group, results):
                summed[(slice(None), *window)] += result * gaussian
                counts[window] += gaussian
        summed /= counts
        total = summed if total is None else total.add_(summed)
    if len(fold_weights) > 1:
        total /= len(fold_weights)
    return total[(slice(None), *keep)]


def mirrored(network: torch.nn.Module, inputs: torch.Tensor, axes: tuple[int, ...]
             ) -> torch.Tensor:
    """The network's logits, averaged over every combination of mirrorings along `axes`."""
    result = network(inputs).float()
    if not axes:
        return result
    dims = [a + 2 for a in axes]
    flips = [c for r in range(1, len(dims) + 1) for c in itertools.combinations(dims, r)]
    for flip in flips:
        result += torch.flip(network(torch.flip(inputs, flip)).float(), flip)
    return result / (len(flips) + 1)
