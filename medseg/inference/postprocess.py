"""Connected-component clean-up of label masks, organ by organ, within each organ's bounding box."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 26-connectivity: voxels touching at a corner belong to the same component.
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def _components(organ_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component ids of a binary mask and the voxel count of each (index 0 is background)."""
    components, count = ndimage.label(organ_mask, structure=_STRUCTURE)
    return components, np.bincount(components.ravel(), minlength=count + 1)


def clean_components(mask: np.ndarray, keep_largest: bool = False, min_voxels: int = 0
                     ) -> np.ndarray:
    """Per organ: keep only its largest component and/or drop components under min_voxels."""
    if not keep_largest and min_voxels <= 0:
        return mask
    out = mask.copy()
    boxes = ndimage.find_objects(mask)  # one bounding box per label value 1..max
    for organ, box in enumerate(boxes, start=1):
        if box is None:
            continue
        region = out[box]
        components, sizes = _components(region == organ)
        sizes[0] = 0
        keep = sizes >= max(min_voxels, 1)
        if keep_largest and sizes.max() > 0:
            keep &= np.arange(len(sizes)) == sizes.argmax()
        drop = ~keep[components] & (region == organ)
        region[drop] = 0
    return out


def voxels_for_volume(volume_mm3: float, affine: np.ndarray) -> int:
    """How many voxels of this grid make up volume_mm3."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
    return int(np.ceil(volume_mm3 / voxel_mm3)) if volume_mm3 > 0 else 0
