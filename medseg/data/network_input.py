"""What the network sees: the one definition shared by training, validation and inference.

A scan becomes network input in three steps, and every code path takes them from here:
1. geometry: reorient to RAS (or LPS, the frame of a fine-tuned nnU-Net model) and resample
   to the working spacing (labels by nearest neighbour);
2. intensity: clip to the CT window and z-score (`normalize`);
3. padding: a scan smaller than a patch along an axis is padded with air (-1024 HU, so after
   normalisation the window's lowest value, `pad_value`), and its label with background.
   Training pads its cached cases that way; the sliding window pads with the same value.
   Fine-tuned nnU-Net models pad as nnU-Net does, with the normalised value 0 ("zero").

Checkpoints carry it (`to_config`), so `medseg infer` rebuilds exactly what training used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# MONAI's transforms are imported where they are built: the command line reads this module's
# constants for --help, which must not wait for torch and MONAI to load.

AIR_HU = -1024.0  # what a scan is padded with: outside the patient there is air
ORIENTATION = "RAS"
# Working frames: axes always x, y, z (so augmentation and 2D slicing know which is axial);
# LPS is the frame nnU-Net models trained on DICOM-derived scans saw (medseg.nets.nnunet).
ORIENTATIONS = ("RAS", "LPS")
# Checkpoints written before padding was part of the definition: training padded by repeating
# the edge, inference with the normalised value 0. Inference keeps doing the latter for them.
LEGACY_PADDING = "zero"
# "zero" is also nnU-Net's padding (the normalised value 0), which fine-tuned nnU-Net models
# keep: a network trained with it reads air padding as anatomy.
PADDINGS = ("air", LEGACY_PADDING)


@dataclass(frozen=True)
class NetworkInput:
    """Working spacing, CT normalisation, patch and padding: how a scan becomes input."""

    spacing: tuple[float, float, float]
    intensity: Mapping  # {"clip": [lo, hi], "mean": m, "std": s}, in HU
    patch_size: tuple[int, ...]
    spatial_dims: int = 3
    context_slices: int = 0
    padding: str = "air"
    orientation: str = ORIENTATION

    @classmethod
    def from_config(cls, config: Mapping) -> NetworkInput:
        """From a checkpoint's or run's config (older checkpoints: legacy padding)."""
        model = config.get("model", {})
        return cls(spacing=tuple(float(s) for s in config["spacing"]),
                   intensity=dict(config["intensity"]),
                   patch_size=tuple(int(p) for p in config["patch_size"]),
                   spatial_dims=int(model.get("spatial_dims", 3)),
                   context_slices=int(model.get("context_slices", 0)),
                   padding=config.get("padding", LEGACY_PADDING),
                   orientation=config.get("orientation", ORIENTATION))

    def to_config(self) -> dict:
        """The keys a checkpoint stores (plain JSON types); from_config reads them back."""
        return {"spacing": list(self.spacing), "intensity": dict(self.intensity),
                "patch_size": list(self.patch_size), "padding": self.padding,
                "orientation": self.orientation}

    def working_grid(self, keys: Sequence[str] = ("image",)) -> list:
        """Reorient to the working frame (RAS) and resample to the working spacing (images
        linear, labels nearest)."""
        from monai.transforms import Orientationd, Spacingd

        modes = ["bilinear" if k == "image" else "nearest" for k in keys]
        return [Orientationd(keys, axcodes=self.orientation, labels=None),
                Spacingd(keys, pixdim=self.spacing, mode=modes, dtype=np.float32)]

    def normalize(self, keys: Sequence[str] = ("image",)):
        """nnU-Net's CT normalisation as one linear map (MONAI's ScaleIntensityRanged): clip
        to [lo, hi], then z-score."""
        from monai.transforms import ScaleIntensityRanged

        lo, hi = self.intensity["clip"]
        return ScaleIntensityRanged(keys, a_min=lo, a_max=hi, b_min=self.normalized(lo),
                                    b_max=self.normalized(hi), clip=True)

    def normalized(self, hu: float) -> float:
        """An HU value as the network sees it."""
        lo, hi = self.intensity["clip"]
        return (min(max(hu, lo), hi) - self.intensity["mean"]) / self.intensity["std"]

    @property
    def pad_value(self) -> float:
        """The normalised value the sliding window pads with: air, as training pads."""
        return 0.0 if self.padding == LEGACY_PADDING else self.normalized(AIR_HU)

    @property
    def sample_size(self) -> tuple[int, ...]:
        """What training crops: the patch in 3D; in 2D an in-plane patch 1+2K slices thick."""
        if self.spatial_dims == 3:
            return tuple(self.patch_size)
        return (*self.patch_size[:2], 1 + 2 * self.context_slices)

    @property
    def window(self) -> tuple[int, ...]:
        """Sliding-window size: the patch in 3D; in 2D its in-plane size over all slices (-1)."""
        if self.spatial_dims == 3:
            return tuple(self.patch_size)
        return (*self.patch_size[:2], -1)

    @property
    def pad_hu(self) -> float:
        """What training pads raw HU with: air, or for "zero" padding the HU that normalises
        to 0 (the intensity mean, within the window)."""
        if self.padding != LEGACY_PADDING:
            return AIR_HU
        lo, hi = self.intensity["clip"]
        return float(min(max(self.intensity["mean"], lo), hi))

    @property
    def end_slice_padding(self) -> float | None:
        """2.5D: what lies beyond a volume's end slices as their neighbours (None: repeated)."""
        return None if self.padding == LEGACY_PADDING else self.pad_value

    def pad_to_sample(self) -> list:
        """Training's padding of cases smaller than a sample: images with air, labels with 0.

        In 2.5D, K air slices also go before the first and after the last slice, so end slices
        are trained with the neighbours inference gives them. Done on raw HU before
        normalisation, which maps AIR_HU to exactly `pad_value`.
        """
        from monai.transforms import BorderPadd, SpatialPadd

        ends = [] if self.spatial_dims == 3 or not self.context_slices else [
            BorderPadd("image", (0, 0, self.context_slices), mode="constant", value=AIR_HU),
            BorderPadd("label", (0, 0, self.context_slices), mode="constant", value=0)]
        return [*ends, SpatialPadd("image", self.sample_size, mode="constant", value=self.pad_hu),
                SpatialPadd("label", self.sample_size, mode="constant", value=0)]
