"""nnU-Net's export, back onto the scan: logits resampled linearly to the cropped scan's shape
(nearest along a thick axis) and turned into labels, then uncropped and transposed back.

The one change from nnU-Net: the logits go back slab by slab in float32 torch, argmax'd as
they come, instead of all classes at once in float64, which is where nnU-Net spends most of
its time and memory on large scans.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medseg.models.nnunet.preprocessing import nearest_index, separate_axis
from medseg.models.resample import SLAB_BYTES


def linear_weights(old: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation on the cell grid with edge clamping (torch's align_corners=False,
    skimage's resize order 1): lower index, upper index, weight of the upper."""
    coords = np.maximum((np.arange(new) + 0.5) * (old / new) - 0.5, 0)
    low = np.minimum(np.floor(coords).astype(int), old - 1)
    high = np.minimum(low + 1, old - 1)
    return low, high, (coords - low).astype(np.float32)


def back_to_crop(logits: torch.Tensor, shape, spacing, target, keep_probabilities: bool,
                 regions: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits on the working grid (spacing `target`) resampled back to the cropped scan's
    shape (spacing `spacing`) and turned into labels, slab by slab along the thick axis (or
    the first): linear in-plane, nearest or linear along the slab axis, as nnU-Net's order-1
    resampling with its separate-z rule. With keep_probabilities, the softmax x 255 too."""
    shape = tuple(int(s) for s in shape)
    axis = separate_axis(target, spacing)
    slab_axis = 0 if axis is None else axis
    logits = logits.movedim(slab_axis + 1, 1)  # (C, S, A, B)
    out_shape = [shape[slab_axis]] + [s for a, s in enumerate(shape) if a != slab_axis]
    plane = tuple(out_shape[1:])
    old = logits.shape[1]
    if axis is None:
        low, high, weight = linear_weights(old, out_shape[0])
    else:
        low = high = nearest_index(old, out_shape[0])
        weight = np.zeros(out_shape[0], dtype=np.float32)
    mask = np.empty(out_shape, dtype=np.uint8)
    probs = (np.empty((logits.shape[0], *out_shape), dtype=np.uint8) if keep_probabilities
             else None)
    # Source slices resized in-plane per step: each once, however many rows use it.
    sources_per_step = max(2, SLAB_BYTES // (logits.shape[0] * math.prod(plane) * 4))
    step = max(1, int((sources_per_step - 1) * out_shape[0] / old))
    for first in range(0, out_shape[0], step):
        rows = range(first, min(first + step, out_shape[0]))
        sources = np.unique(np.concatenate([low[rows], high[rows]]))
        planes = resized_planes(logits, sources, plane)  # (S, C, A, B), classes innermost
        for row in rows:
            slab = planes[int(np.searchsorted(sources, low[row]))]
            if axis is None and weight[row] > 0:
                upper = planes[int(np.searchsorted(sources, high[row]))]
                slab = torch.lerp(slab, upper, float(weight[row]))
            mask[row] = labels_from_logits(slab, regions)
            if probs is not None:
                probs[:, row] = (torch.softmax(slab, 0) * 255).round().to(torch.uint8).numpy()
    order = list(range(1, 3))
    order.insert(slab_axis, 0)
    mask = np.transpose(mask, order)
    if probs is not None:
        probs = np.transpose(probs, [0, *[o + 1 for o in order]])
    return mask, probs


def labels_from_logits(logits: torch.Tensor, regions: tuple[int, ...] | None) -> np.ndarray:
    """Labels from logits: argmax; for a region model each region whose sigmoid exceeds 0.5
    (logit > 0) writes its value, in regions_class_order (nnU-Net's LabelManager)."""
    if not regions:
        return logits.argmax(0).to(torch.uint8).numpy()
    mask = torch.zeros(logits.shape[1:], dtype=torch.uint8)
    for channel, value in enumerate(regions):
        mask[logits[channel] > 0] = value
    return mask.numpy()


def resized_planes(logits: torch.Tensor, rows: np.ndarray, plane) -> torch.Tensor:
    """The given slices of (C, S, A, B) resized bilinearly in-plane to `plane`, as
    (S, C, A, B) with the classes innermost in memory (channels_last), so that the argmax
    over classes reads contiguous memory."""
    picked = logits[:, torch.from_numpy(rows)].transpose(0, 1)
    picked = picked.contiguous(memory_format=torch.channels_last)
    if tuple(picked.shape[2:]) == tuple(plane):
        return picked
    return F.interpolate(picked, size=plane, mode="bilinear", align_corners=False)


def uncropped(mask_cropped: np.ndarray, probs_cropped: np.ndarray | None, box, shape, classes: int
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """The crop's labels (and probabilities) put back into the whole array; outside the crop
    lies background, certainly."""
    mask = np.zeros(shape, dtype=np.uint8)
    mask[box] = mask_cropped
    if probs_cropped is None:
        return mask, None
    probabilities = np.zeros((classes, *shape), dtype=np.uint8)
    probabilities[0] = 255
    probabilities[(slice(None), *box)] = probs_cropped
    return mask, probabilities
