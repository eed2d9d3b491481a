"""`medseg plan`: a data set fingerprint, and the training plan nnU-Net would derive from it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.errors import MedsegError
from medseg.io import NIFTI_SUFFIXES, scan_suffix
from medseg.manifest import check_case_files, load_manifest

ANISOTROPY_RATIO = 3.0  # nnU-Net: beyond this, the coarse axis keeps a finer target spacing
# Training memory of the default U-Net, bytes per patch voxel per base-channel (activations,
# gradients and Adam state; fp32). Calibrated so 128^3 x 2 at 32 base channels is ~8.6 GB, close
# to nnU-Net's figure for its 3d_fullres U-Net.
BYTES_PER_VOXEL_PER_CHANNEL = 64
PLAN_NAME = "plan.json"


def case_fingerprint(case: dict, num_classes: int, rng: np.random.Generator,
                     samples: int = 10_000) -> dict:
    """Spacing, shape, labelled-voxel HU sample and class voxel counts of one case."""
    image, label = nib.load(case["image"]), nib.load(case["label"])
    reoriented = nib.as_closest_canonical(image)  # spacing and shape in RAS axis order
    hu = np.asarray(image.dataobj, dtype=np.float32)
    labels = np.asarray(label.dataobj).astype(np.int64)
    foreground = hu[labels > 0]
    if foreground.size > samples:
        foreground = rng.choice(foreground, samples, replace=False)
    return {
        "spacing": np.abs(reoriented.header.get_zooms()[:3]).tolist(),
        "shape": list(reoriented.shape[:3]),
        "foreground_hu": foreground,
        "class_voxels": np.bincount(labels.ravel(), minlength=num_classes)[:num_classes].tolist(),
    }


def target_spacing(spacings: np.ndarray) -> list[float]:
    """Median spacing; for anisotropic data the coarse axis takes its 10th percentile instead."""
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    if target[worst] / target.min() > ANISOTROPY_RATIO:
        target[worst] = np.percentile(spacings[:, worst], 10)
    return [float(s) for s in target]


def patch_and_batch(median_shape, memory_gb: float, base_channels: int, factor: int,
                    min_batch: int = 2) -> tuple[list[int], int]:
    """The largest patch (up to the median image) whose batch of two fits the memory budget."""
    budget = memory_gb * 1024**3 / (BYTES_PER_VOXEL_PER_CHANNEL * base_channels)
    patch = np.array([max(factor, int(np.ceil(s / factor)) * factor) for s in median_shape])
    while np.prod(patch) * min_batch > budget and patch.max() > factor:
        axis = int(np.argmax(patch))  # shrink the longest side first: keeps patches cubic-ish
        patch[axis] -= factor
    batch = max(min_batch, int(budget // np.prod(patch)))
    return [int(p) for p in patch], int(min(batch, 8))


def network_stride(model_kwargs: dict) -> int:
    """How much the default U-Net downsamples: patches are rounded to multiples of it."""
    strides = model_kwargs.get("strides")
    if strides is None:
        return 2 ** (len(model_kwargs.get("channels", (16, 32, 64, 128, 256))) - 1)
    return int(np.prod([s if isinstance(s, int) else max(s) for s in strides]))


def make_plan(manifest: Path, memory_gb: float = 8.0, model_kwargs: dict | None = None,
              seed: int = 0) -> dict:
    """Fingerprint every training case and derive spacing, normalisation, patch and batch."""
    cases, labels = load_manifest(Path(manifest))
    for case in cases:
        check_case_files(case)
        if not all(scan_suffix(Path(case[k])) in NIFTI_SUFFIXES for k in ("image", "label")):
            raise MedsegError(f"{case['image']}: `medseg plan` reads NIfTI cases only; convert "
                              "the case to .nii.gz, or train without a plan")
    rng = np.random.default_rng(seed)
    prints = [case_fingerprint(c, len(labels), rng) for c in cases]
    spacings = np.array([p["spacing"] for p in prints])
    spacing = target_spacing(spacings)
    shapes = np.array([p["shape"] for p in prints]) * spacings / np.array(spacing)
    model_kwargs = model_kwargs or {}
    base = int(model_kwargs.get("channels", (16,))[0])
    patch, batch = patch_and_batch(np.median(shapes, axis=0), memory_gb, base,
                                   network_stride(model_kwargs))
    hu = np.concatenate([p["foreground_hu"] for p in prints]).astype(np.float64)
    lo, hi = np.percentile(hu, [0.5, 99.5])
    clipped = np.clip(hu, lo, hi)
    class_voxels = np.sum([p["class_voxels"] for p in prints], axis=0)
    return {
        "spacing": spacing,
        "patch_size": patch,
        "batch_size": batch,
        "intensity": {"clip": [float(lo), float(hi)], "mean": float(clipped.mean()),
                      "std": float(clipped.std())},
        "fingerprint": {
            "cases": len(cases),
            "median_spacing": np.median(spacings, axis=0).tolist(),
            "median_shape_at_target": np.median(shapes, axis=0).round(1).tolist(),
            "foreground_hu_percentiles": dict(zip(
                ["p0.5", "p50", "p99.5"], np.percentile(hu, [0.5, 50, 99.5]).round(1).tolist())),
            "class_fraction": {labels[i]: float(class_voxels[i] / class_voxels.sum())
                               for i in range(len(labels))},
        },
        "memory_budget_gb": memory_gb,
    }
