"""A grid's geometry read off its affine: voxel size, voxel volume, and its RAS+ axis order."""

from __future__ import annotations

import numpy as np
from nibabel.orientations import io_orientation


def voxel_spacing(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel size in mm along each array axis (column norms of the affine)."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres."""
    return abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0


def ras_orientation(affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """nibabel's orientation that turns the array axes into RAS+, and the spacing after it."""
    ornt = io_orientation(affine)
    spacing = voxel_spacing(affine)
    ras_spacing = [0.0] * 3
    for axis, (target, _) in enumerate(ornt):
        ras_spacing[int(target)] = spacing[axis]
    return ornt, tuple(ras_spacing)


def ras_shape_and_spacing(shape, affine: np.ndarray) -> tuple[list[int], list[float]]:
    """A grid's shape and voxel spacing in RAS axis order, read off its affine (no data moved)."""
    ornt, ras_spacing = ras_orientation(affine)
    ras_shape = [0] * 3
    for axis, (target, _) in enumerate(ornt):
        ras_shape[int(target)] = int(shape[axis])
    return ras_shape, list(ras_spacing)


def radiological_plane(volume_ras: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A slice of a RAS+ volume for imshow(origin="lower"): rows run up the higher remaining
    axis (superior, or anterior in axial), columns leftwards for axial and coronal (the
    patient's right on the left) and anteriorwards-to-the-left for sagittal."""
    cut = [slice(None)] * 3
    cut[axis] = index
    return volume_ras[tuple(cut)].T[:, ::-1]
