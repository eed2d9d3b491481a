"""Training's MONAI dictionary transforms: loading, caching, patch sampling and augmentation.

What the network sees (geometry, normalisation, padding) is defined in medseg.data.network_input.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    EnsureTyped,
    MapLabelValue,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)

from medseg.choices import AUGMENTATIONS
from medseg.data.io import load_scan
from medseg.data.network_input import NetworkInput
from medseg.data.scan_checks import check_label_ids, check_same_grid


class LoadScand(MapTransform):
    """Load scans through data.io.load_scan, which validates them and names the file on error.

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


class DataSetLabelsd(MapTransform):
    """A case of combined data sets (medseg.data.manifest): its label's ids moved onto the
    combined map ("combined_ids", indexed by its data set's ids) and, given num_classes, one flag
    per combined class saying whether its data set annotates that class ("annotated"), for
    the loss. Cases of a single data set pass unchanged."""

    def __init__(self, keys="label", num_classes: int | None = None):
        super().__init__(keys)
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        if "combined_ids" not in out:
            return out
        combined_ids = out.pop("combined_ids")  # lists of unequal length would not batch
        for key in self.key_iterator(out):
            label = out[key]
            found = torch.unique(label.as_subclass(torch.Tensor)).long().tolist()
            check_label_ids(found, len(combined_ids), label.meta.get("filename_or_obj", key),
                            out.get("dataset", "its dataset.json"))
            out[key] = MapLabelValue(range(len(combined_ids)), combined_ids,
                                     dtype=label.dtype)(label)
        if self.num_classes is not None:
            annotated = torch.zeros(self.num_classes, dtype=torch.bool)
            annotated[out["annotated"]] = True
            out["annotated"] = annotated
        return out


def geometry_transforms(spec: NetworkInput, keys=("image", "label"),
                        num_classes: int | None = None) -> list:
    """Load, move a combined data set's label ids onto its map, then reorient and resample to
    the working grid as spec defines it."""
    relabel = [DataSetLabelsd("label", num_classes)] if "label" in keys else []
    return [LoadScand(keys), *relabel, *spec.working_grid(keys)]


# Patch centres kept per class and case, evenly spread over the class's voxels (nnU-Net keeps
# 10,000 too). Every voxel's index would cost 8 bytes per voxel, more than image and label.
CLASS_LOCATIONS = 10_000


def training_cache_transforms(spec: NetworkInput, num_classes: int,
                              class_locations: int | None = CLASS_LOCATIONS) -> Compose:
    """The deterministic, cacheable part of training: geometry, padding to at least a sample
    (air and background, as inference pads), class locations.

    The whole field of view is kept, as inference sees it. Cropping to the body first made
    every patch wider than the body show it centred between equal bands of padding, while a
    scan puts it wherever the table was: a model fitted that way on the real case scored Dice
    0.62 against 0.89 once the patch exceeded the body front to back.
    """
    return Compose([
        *geometry_transforms(spec, num_classes=num_classes),
        RecordShaped("image"),
        *spec.pad_to_sample(),
        EnsureTyped("label", dtype=torch.uint8),
        ClassesToIndicesd("label", num_classes=num_classes, max_samples_per_class=class_locations),
    ])


class RecordShaped(MapTransform):
    """Keep the scan's size on the working grid (before padding) as "working_shape"."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        out["working_shape"] = [int(n) for n in out[self.keys[0]].shape[1:]]
        return out


def validation_cache_transforms(spec: NetworkInput) -> Compose:
    """Validation cases on the working grid, uncropped and unpadded: what inference predicts on."""
    return Compose([*geometry_transforms(spec), EnsureTyped("label", dtype=torch.uint8)])


class RandOrganContrastd(RandomizableTransform, MapTransform):
    """Contrast-phase augmentation: shift each labelled organ's HU by its own random offset.

    Iodine raises organs by different amounts in each phase (the aorta by about 240 HU in the
    arterial phase, the liver by about 50 in the portal venous one), so a model trained on one
    phase sees another's organs at unfamiliar intensities. Independent per-organ offsets in HU
    (before normalisation) teach it to rely on shape and context instead. Keys: image, label.
    """

    def __init__(self, keys=("image", "label"), prob: float = 0.3,
                 offsets_hu: tuple[float, float] = (-150.0, 250.0)):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.offsets_hu = offsets_hu

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        out = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return out
        image_key, label_key = self.keys
        label = out[label_key].as_subclass(torch.Tensor).long()  # plain tensors: MetaTensor
        counts = torch.bincount(label.flatten())  # indexing is ~10x slower
        offsets = torch.zeros(len(counts))
        for organ in torch.nonzero(counts[1:]).flatten().tolist():
            offsets[organ + 1] = float(self.R.uniform(*self.offsets_hu))
        out[image_key] = out[image_key] + offsets[label].to(out[image_key].dtype)
        return out


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


def training_sample_transforms(spec: NetworkInput, num_classes: int, affine_prob: float = 0.25,
                               augment: str = "light", contrast_prob: float = 0.3) -> Compose:
    """Random part: class-balanced patches (so small organs are seen), then augmentation.

    Cached cases are at least a sample large (padded as spec says), so crops never pad. In 2D
    mode the patches are slabs of 1+2K axial slices from the same cached 3D volumes, turned into
    K-neighbour channel stacks at the end (SlicesToChannelsd).
    """
    # Background gets half an organ's share; every organ is a patch centre equally often.
    ratios = [0.5] + [1.0] * (num_classes - 1)
    keys = ("image", "label")
    return Compose([
        RandCropByLabelClassesd(keys, label_key="label", spatial_size=spec.sample_size,
                                ratios=ratios, num_classes=num_classes,
                                indices_key="label_cls_indices", warn=False),
        RandOrganContrastd(keys, prob=contrast_prob),
        spec.normalize(),
        *augmentation_transforms(augment, affine_prob),
        EnsureTyped(keys, dtype=(torch.float32, torch.long), track_meta=False),
        *([SlicesToChannelsd(keys)] if spec.spatial_dims == 2 else []),
    ])
