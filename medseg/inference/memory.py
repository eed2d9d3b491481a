"""Up-front memory estimates: a scan too large to segment is refused with a number, before the
operating system kills the process half-way through it."""

from __future__ import annotations

import math
from pathlib import Path

from medseg.errors import MedsegError
from medseg.runtime import available_bytes


def inference_bytes(shape, spacing, working_spacing, num_classes: int,
                    probabilities: bool = False, crf=None) -> tuple[int, tuple[int, ...]]:
    """Peak memory of segmenting one scan, roughly, and the working grid's size.

    On the working grid: the resampled and normalised image, and about three float32 copies
    of the class probabilities (the sliding window's sum, softmax, the TTA/ensemble total).
    On the scan's own grid: 12 bytes per voxel, the peak of reading and checking it (the
    file's integers, the float32 scan, a finiteness mask; 11-12 bytes per voxel measured on
    int16 NIfTIs of 512 x 512 x 600 and x 1200), which outlasts the later uint8 mask and its
    post-processing copy; plus uint8 probabilities when they are saved, the resampling's
    128 MB slabs, and 0.5 GB for torch, MONAI and the model. The dense CRF (`crf`, its
    CRFSettings) holds three copies of the probabilities too, and its workspace_bytes more.
    """
    working = tuple(max(1, math.ceil(n * s / w))
                    for n, s, w in zip(shape, spacing, working_spacing))
    voxels, own = math.prod(working), math.prod(shape)
    total = (voxels * 4 * (3 * num_classes + 3) + (128 << 20) + (500 << 20)
             + own * (12 + (num_classes if probabilities else 0))
             + (_crf_bytes(working, working_spacing, crf) if crf else 0))
    return total, working


def _crf_bytes(working, working_spacing, settings) -> int:
    """The dense CRF's workspace (imported only when asked for: it needs torch)."""
    from medseg.models.crf import workspace_bytes

    return workspace_bytes(working, working_spacing, settings)


def check_inference_memory(path: Path, shape, spacing, working_spacing, num_classes: int,
                           probabilities: bool = False, budget: int | None = None,
                           crf=None) -> None:
    """Refuse a scan whose estimated peak memory exceeds what is available, with the estimate."""
    budget = available_bytes() if budget is None else budget
    if budget is None:
        return
    need, working = inference_bytes(shape, spacing, working_spacing, num_classes, probabilities,
                                    crf)
    if need > budget:
        grid = "x".join(map(str, working))
        mm = "x".join(f"{w:g}" for w in working_spacing)
        raise MedsegError(f"{path}: segmenting it needs about {need / 1e9:.3g} GB of memory "
                          f"({grid} voxels at the model's {mm} mm, {num_classes} classes), but "
                          f"{budget / 1e9:.3g} GB is available; crop the scan to the region to "
                          "segment, or use a machine with more memory")
