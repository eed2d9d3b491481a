"""nnU-Net's preprocessing of a scan, step by step (nnunetv2 2.x, DefaultPreprocessor): the
array in its image reader's axis order (SimpleITK's z, y, x; never reoriented), transposed by
the plan's transpose_forward; cropped to the box of nonzero voxels; normalised (CT: clipped to
the foreground's 0.5-99.5 percentiles, then the foreground's mean and std); resampled to the
configuration's spacing (cubic spline, or for anisotropic spacing in-plane cubic and nearest
along the thick axis)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ANISOTROPY = 3.0  # nnU-Net's ANISO_THRESHOLD: spacing ratios above it resample "separate z"


def network_axes(transpose_forward) -> list[int]:
    """For each axis of nnU-Net's array, the scan axis it is. SimpleITK's array is the scan's
    (X, Y, Z) reversed; transpose_forward then permutes that."""
    return [2 - int(t) for t in transpose_forward]


def separate_axis(current, new) -> int | None:
    """The thick axis nnU-Net resamples on its own (nearest), or None (nnU-Net's rules)."""
    for spacing in (current, new):
        spacing = np.asarray(spacing, dtype=float)
        if spacing.max() / spacing.min() > ANISOTROPY:
            axes = np.where(spacing.max() / spacing == 1)[0]
            return int(axes[0]) if len(axes) == 1 else None
    return None


def new_shape(shape, spacing, target) -> tuple[int, ...]:
    return tuple(int(round(s / t * n)) for n, s, t in zip(shape, spacing, target))


def nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
    """nnU-Net's crop: the bounding box of nonzero voxels (holes filled do not change it)."""
    nonzero = image != 0
    box = []
    for axis in range(image.ndim):
        other = tuple(a for a in range(image.ndim) if a != axis)
        hits = np.flatnonzero(nonzero.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else
                   slice(0, image.shape[axis]))
    return tuple(box)


def normalize(image: np.ndarray, scheme: str, intensity: dict, use_mask: bool) -> np.ndarray:
    """nnU-Net's normalisation schemes, in place on a float32 array."""
    if scheme == "CTNormalization":
        np.clip(image, intensity["percentile_00_5"], intensity["percentile_99_5"], out=image)
        image -= intensity["mean"]
        image /= max(intensity["std"], 1e-8)
    elif scheme == "ZScoreNormalization":
        if use_mask:
            inside = ndimage.binary_fill_holes(image != 0)
            values = image[inside]
            image[inside] = (values - values.mean()) / max(values.std(), 1e-8)
        else:
            mean, std = image.mean(), image.std()
            image -= mean
            image /= max(std, 1e-8)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= max(image.max(), 1e-8)
    return image


def _spline_resize(image: np.ndarray, shape, order: int) -> np.ndarray:
    """skimage.transform.resize(order, mode='edge', anti_aliasing=False) as nnU-Net calls it:
    scipy's zoom on the cell grid, clipped to the input's range."""
    if tuple(image.shape) == tuple(shape):
        return image
    factors = [n / o for n, o in zip(shape, image.shape)]
    out = ndimage.zoom(image, factors, order=order, mode="nearest", grid_mode=True,
                       output=np.float32)
    if order > 1:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def nearest_index(old: int, new: int) -> np.ndarray:
    """Source index of each output position, as map_coordinates(order=0) picks it."""
    scale = float(old) / new
    coords = scale * (np.arange(new) + 0.5) - 0.5
    return np.clip(np.floor(coords + 0.5).astype(int), 0, old - 1)


def resample_image(image: np.ndarray, shape, spacing, target) -> np.ndarray:
    """nnU-Net's resampling of the image: cubic, or in-plane cubic and nearest along a thick
    axis."""
    shape = tuple(int(s) for s in shape)
    if tuple(image.shape) == shape:
        return image
    axis = separate_axis(spacing, target)
    if axis is None:
        return _spline_resize(image, shape, 3)
    moved = np.moveaxis(image, axis, 0)
    plane = tuple(s for a, s in enumerate(shape) if a != axis)
    slices = np.stack([_spline_resize(moved[i], plane, 3) for i in range(moved.shape[0])])
    slices = slices[nearest_index(moved.shape[0], shape[axis])]
    return np.ascontiguousarray(np.moveaxis(slices, 0, axis))
