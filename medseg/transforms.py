"""MONAI dictionary-transform pipelines shared by training and inference."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from medseg.errors import MedsegError
from medseg.io import load_scan
from medseg.scan_checks import check_same_grid

BODY_HU = -500.0  # voxels above this are the patient, below is air around them


class LoadScand(MapTransform):
    """Load scans through medseg.io.load_scan, which validates them and names the file on error.

    An image and its label must share a grid; the manifest check only sees NIfTI headers, so
    other formats (NRRD, MHA, DICOM) are compared here, once loaded.
    """

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = load_scan(out[key], what=str(key))
        if isinstance(out.get("image"), torch.Tensor) and isinstance(out.get("label"),
                                                                     torch.Tensor):
            image, label = out["image"], out["label"]
            check_same_grid(image.shape[1:], image.affine, label.shape[1:], label.affine,
                            data["image"], data["label"])
        return out


def geometry_transforms(spacing: Sequence[float], keys=("image", "label")) -> list:
    """Load, reorient to RAS and resample to the working spacing (labels by nearest neighbour)."""
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    return [
        LoadScand(keys),
        Orientationd(keys, axcodes="RAS", labels=None),  # axis labels from the meta space
        Spacingd(keys, pixdim=tuple(spacing), mode=modes, dtype=np.float32),
    ]


def normalize_transform(intensity: Mapping, keys=("image",)) -> ScaleIntensityRanged:
    """nnU-Net's CT normalisation as one linear map: clip to [lo, hi], then z-score."""
    lo, hi = intensity["clip"]
    mean, std = intensity["mean"], intensity["std"]
    return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=(lo - mean) / std,
                                b_max=(hi - mean) / std, clip=True)


# Patch centres kept per class and case, evenly spread over the class's voxels (nnU-Net keeps
# 10,000 too). Every voxel's index would cost 8 bytes per voxel, more than image and label.
CLASS_LOCATIONS = 10_000


def training_cache_transforms(spacing: Sequence[float], num_classes: int,
                              class_locations: int | None = CLASS_LOCATIONS) -> Compose:
    """The deterministic, cacheable part of training: geometry, body crop, class locations."""
    return Compose([
        *geometry_transforms(spacing),
        CropForegroundd(("image", "label"), source_key="image", select_fn=lambda x: x > BODY_HU,
                        margin=2, allow_smaller=True),
        EnsureTyped("label", dtype=torch.uint8),
        ClassesToIndicesd("label", num_classes=num_classes, max_samples_per_class=class_locations),
    ])


AUGMENTATIONS = ("light", "nnunet")


def augmentation_transforms(level: str, affine_prob: float) -> list:
    """'light' (the demo's, tuned for short CPU runs) or nnU-Net's fuller set.

    Flips and rotations never mirror left and right: that would swap the kidneys' meaning.
    """
    keys, modes = ("image", "label"), ("bilinear", "nearest")
    if level == "light":
        return [
            RandAffined(keys, prob=affine_prob, rotate_range=(0.0, 0.0, 0.25), scale_range=0.1,
                        mode=modes, padding_mode="border"),
            RandScaleIntensityd("image", factors=0.1, prob=0.3),
            RandShiftIntensityd("image", offsets=0.1, prob=0.3),
            RandGaussianNoised("image", std=0.05, prob=0.15),
        ]
    if level == "nnunet":
        return [
            RandAffined(keys, prob=0.2, rotate_range=(0.2, 0.2, 0.5), scale_range=(-0.3, 0.4),
                        mode=modes, padding_mode="border"),
            RandGaussianNoised("image", std=0.1, prob=0.1),
            RandGaussianSmoothd("image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0),
                                sigma_z=(0.5, 1.0), prob=0.2),
            RandScaleIntensityd("image", factors=0.25, prob=0.15),  # brightness
            RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),  # gamma
            RandShiftIntensityd("image", offsets=0.1, prob=0.15),  # contrast offset
            RandSimulateLowResolutiond("image", zoom_range=(0.5, 1.0), prob=0.25),
            RandFlipd(keys, spatial_axis=1, prob=0.5),  # anterior-posterior
            RandFlipd(keys, spatial_axis=2, prob=0.5),  # superior-inferior
        ]
    raise ValueError(f"augmentation {level!r}: choose one of {', '.join(AUGMENTATIONS)}")


class SlicesToChannelsd(MapTransform):
    """2D mode: a (1, X, Y, 1+2K) slab becomes a (1+2K, X, Y) image (slices z-K..z+K as
    channels) and the centre slice of each label. Keys: the image first, then the labels."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        image_key, *label_keys = self.keys
        out[image_key] = out[image_key][0].permute(2, 0, 1)
        for key in label_keys:
            out[key] = out[key][..., out[key].shape[-1] // 2]
        return out


def sample_size(patch_size: Sequence[int], spatial_dims: int,
                context_slices: int = 0) -> tuple[int, ...]:
    """What the sampler crops: the patch in 3D; in 2D an in-plane patch 1+2K slices thick."""
    if spatial_dims == 3:
        return tuple(patch_size)
    return (*patch_size[:2], 1 + 2 * context_slices)


def training_sample_transforms(intensity: Mapping, patch_size: Sequence[int],
                               num_classes: int, affine_prob: float = 0.25,
                               augment: str = "light", spatial_dims: int = 3,
                               context_slices: int = 0) -> Compose:
    """Random part: class-balanced patches (so small organs are seen), then augmentation.

    In 2D mode the patches are slabs of 1+2K axial slices from the same cached 3D volumes,
    turned into K-neighbour channel stacks at the end (SlicesToChannelsd).
    """
    # Background gets half an organ's share; every organ is a patch centre equally often.
    ratios = [0.5] + [1.0] * (num_classes - 1)
    keys = ("image", "label")
    size = sample_size(patch_size, spatial_dims, context_slices)
    return Compose([
        SpatialPadd(keys, spatial_size=size, mode="edge"),
        RandCropByLabelClassesd(keys, label_key="label", spatial_size=size, ratios=ratios,
                                num_classes=num_classes, indices_key="label_cls_indices",
                                warn=False),
        normalize_transform(intensity),
        *augmentation_transforms(augment, affine_prob),
        EnsureTyped(keys, dtype=(torch.float32, torch.long), track_meta=False),
        *([SlicesToChannelsd(keys)] if spatial_dims == 2 else []),
    ])


def foreground_intensity_stats(items: Sequence[Mapping], max_voxels: int = 2_000_000,
                               seed: int = 0) -> dict:
    """Percentiles 0.5/99.5, mean and std of labelled voxels: the CT normalisation settings."""
    rng = np.random.default_rng(seed)
    per_case = max(1, max_voxels // max(1, len(items)))
    samples = []
    for item in items:
        values = np.asarray(item["image"])[np.asarray(item["label"]) > 0]
        if values.size > per_case:
            values = rng.choice(values, per_case, replace=False)
        samples.append(values.astype(np.float64))
    voxels = np.concatenate(samples) if samples else np.empty(0)
    if voxels.size == 0:
        raise MedsegError(f"none of the {len(items)} training labels has an organ voxel; check "
                          "the manifest's label paths")
    lo, hi = np.percentile(voxels, [0.5, 99.5])
    clipped = np.clip(voxels, lo, hi)
    return {"clip": [float(lo), float(hi)], "mean": float(clipped.mean()),
            "std": float(max(clipped.std(), 1e-3))}
