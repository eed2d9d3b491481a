"""What a loaded scan or label must satisfy before medseg uses it.

Problems that would silently give a wrong mask (impossible geometry, a blank scan, fractional
labels) are errors; oddities that may be deliberate (intensities that are not Hounsfield units,
a label without organs) are warnings. Every message names the file and says what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from medseg.data.geometry import voxel_spacing
from medseg.errors import MedsegError

log = logging.getLogger("medseg")

# From micro-CT voxels to the thickest clinical slices, with a margin each side. Outside it a
# header is wrong (mm taken for m or um, a zeroed field), and resampling it would either blow
# the working grid up to terabytes or shrink the body to a few voxels.
SPACING_RANGE_MM = (0.01, 50.0)
# CT spans about -1000 HU (air) to over 1000 HU (bone); a narrower range is a normalised copy.
NORMALISED_RANGE = 50.0
AIR_BELOW_HU = -500.0  # a CT in HU has air somewhere: lungs, bowel gas, around the body
# No scanner stores a voxel farther than this from its isocentre (a kilometre), and no CT value
# (HU, or a raw uint16 before rescaling) lies beyond this: a header saying so is damaged.
MAX_ORIGIN_MM = 1e6
MAX_INTENSITY = 1e6


def check_geometry(affine: np.ndarray, path: Path, what: str) -> None:
    """Refuse headers whose voxel-to-world map is not finite or whose spacing is implausible."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise MedsegError(f"{path}: the {what}'s header holds NaN or infinite geometry (affine); "
                          "fix the header's spacing and orientation, or re-export the scan")
    farthest = float(np.abs(affine[:3, 3]).max())
    if farthest > MAX_ORIGIN_MM:
        raise MedsegError(f"{path}: the {what}'s origin lies {farthest:.3g} mm from the "
                          "scanner's centre, which no scan does; fix the header's origin "
                          "(qoffset or srow), or re-export the scan")
    spacing = voxel_spacing(affine)
    lo, hi = SPACING_RANGE_MM
    if not all(lo <= s <= hi for s in spacing):
        shown = " x ".join(f"{s:.4g}" for s in spacing)
        raise MedsegError(f"{path}: voxel spacing {shown} mm is not plausible (each axis should "
                          f"be {lo:g}-{hi:g} mm); fix the spacing (pixdim) in the header, or "
                          "re-export the scan")


def check_same_grid(image_shape, image_affine, label_shape, label_affine, image_path: Path,
                    label_path: Path) -> None:
    """A label must be drawn on its image's voxel grid: the same voxel centres in the world
    (to 1e-3 mm), though a file may store its axes in another order or direction.

    A DICOM series read as LPS and its NIfTI mask stored as LAS (TotalSegmentator's, for
    example) are the same grid: reorienting both to RAS, as training does, lines them up.
    """
    shape, affine = _as_image_axes(label_shape, label_affine, image_affine)
    if tuple(image_shape) != shape:
        raise MedsegError(f"{label_path}: label shape {tuple(label_shape)} does not match image "
                          f"shape {tuple(image_shape)} ({Path(image_path).name}); pair each "
                          "image with its own label")
    if not np.allclose(np.asarray(image_affine, dtype=np.float64), affine, atol=1e-3):
        raise MedsegError(f"{label_path}: label affine differs from the image's "
                          f"({Path(image_path).name}); resample the label onto the image grid")


def same_grid(shape, affine, other_shape, other_affine) -> bool:
    """Whether two grids have the same voxel centres, whatever their axes' order or direction."""
    reordered_shape, reordered = _as_image_axes(other_shape, other_affine, affine)
    return tuple(shape) == reordered_shape and np.allclose(
        np.asarray(affine, dtype=np.float64), reordered, atol=1e-3)


def onto_axes_of(array: np.ndarray, affine, image_affine) -> np.ndarray:
    """An array on a grid check_same_grid accepted, with its axes in the image's order and
    direction (a view: transposes and flips only)."""
    from nibabel.orientations import apply_orientation

    return apply_orientation(array, _axes_to_image(affine, image_affine))


def _as_image_axes(shape, affine, image_affine) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid's shape and affine with its axes stored in the order and direction of the image's."""
    from nibabel.orientations import inv_ornt_aff

    affine = np.asarray(affine, dtype=np.float64)
    to_image = _axes_to_image(affine, image_affine)
    shape = tuple(int(n) for n in shape)
    reordered = affine @ inv_ornt_aff(to_image, shape)
    order = np.argsort(to_image[:, 0])  # the label axis that becomes each image axis
    return tuple(shape[int(i)] for i in order), reordered


def _axes_to_image(affine, image_affine) -> np.ndarray:
    from nibabel.orientations import io_orientation, ornt_transform

    return ornt_transform(io_orientation(np.asarray(affine, dtype=np.float64)),
                          io_orientation(np.asarray(image_affine, dtype=np.float64)))


def check_label_ids(found: list[int], num_classes: int, path: Path,
                    dataset: str | None = None) -> None:
    """A label's values must be ids of the label map: 0..num_classes-1; a case of combined data
    sets is checked against its own data set's map (`dataset`)."""
    if dataset is not None:
        unknown = [v for v in found if not 0 <= v < num_classes]
        if unknown:
            raise MedsegError(f"{path}: label values {unknown} are not in its data set's map "
                              f"({dataset}: ids 0..{num_classes - 1}); fix the label or that "
                              "map")
    elif max(found) >= num_classes or min(found) < 0:
        raise MedsegError(f"{path}: label values {found} fall outside the label map "
                          f"(0..{num_classes - 1}); fix the label, or the manifest's labels (is "
                          "an image listed as the label?)")


def check_intensities(volume: torch.Tensor, path: Path) -> None:
    """A blank scan is an error; intensities that are not CT in HU get a warning."""
    lo, hi = (float(v) for v in torch.aminmax(volume))
    if lo == hi:
        raise MedsegError(f"{path}: every voxel is {lo:g}, the scan is blank; check the export "
                          "(a DICOM conversion that lost the pixel data gives this)")
    if max(abs(lo), abs(hi)) > MAX_INTENSITY:
        raise MedsegError(f"{path}: intensities reach {lo:.3g}..{hi:.3g}, far beyond any CT "
                          "(Hounsfield units lie within about -1024..30000); check the header's "
                          "intensity scaling (scl_slope and scl_inter, or RescaleSlope and "
                          "RescaleIntercept), or re-export the scan")
    if hi - lo < NORMALISED_RANGE or lo >= 0:
        log.warning("%s: intensities %.4g..%.4g do not look like CT in Hounsfield units (air is "
                    "-1000); medseg normalises HU itself, so give it the original scan", path,
                    lo, hi)
    elif lo > AIR_BELOW_HU:
        log.warning("%s: no voxel below %g HU (lowest %.4g), so no air: if these are not "
                    "Hounsfield units (stored values without their rescale slope and "
                    "intercept, an offset), convert them; a field of view inside the body is "
                    "fine", path, AIR_BELOW_HU, lo)


def check_label(volume: torch.Tensor, path: Path) -> None:
    """Labels must be whole organ ids; an all-background label is allowed, with a warning.

    Ids beyond 0..255 are refused here, before training stores labels as uint8 (where 300 would
    quietly become 44); ids beyond the label map are refused once it is known (train.py).
    """
    if volume.is_floating_point():
        fractional = volume[volume != volume.round()]
        if fractional.numel():
            raise MedsegError(f"{path}: the label holds non-integer values (e.g. "
                              f"{float(fractional[0]):g}); resample labels with nearest "
                              "neighbour, and check this is the label, not the image")
    lo, hi = (int(v) for v in torch.aminmax(volume))
    if lo < 0 or hi > 255:
        raise MedsegError(f"{path}: label values {lo}..{hi} fall outside the label map (ids "
                          "0..255 at most); fix the label, or check this is the label file")
    if not volume.any():
        log.warning("%s: the label is all background (0); the case trains as background only: "
                    "check that it is the right file", path)

