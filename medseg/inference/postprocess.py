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
    return clean_organs(mask, {}, (keep_largest, min_voxels))


def clean_organs(mask: np.ndarray, rules: dict[int, tuple[bool, int]],
                 default: tuple[bool, int] = (False, 0)) -> np.ndarray:
    """Per organ id: (keep only its largest component?, drop components under how many
    voxels); organs without a rule get `default`. A mask no rule changes is returned as is."""
    if not any(largest or voxels > 0 for largest, voxels in [default, *rules.values()]):
        return mask
    out = mask.copy()
    boxes = ndimage.find_objects(mask)  # one bounding box per label value 1..max
    for organ, box in enumerate(boxes, start=1):
        keep_largest, min_voxels = rules.get(organ, default)
        if box is None or (not keep_largest and min_voxels <= 0):
            continue
        region = out[box]
        components, sizes = _components(region == organ)
        sizes[0] = 0
        keep = kept_components(sizes, keep_largest, min_voxels)
        drop = ~keep[components] & (region == organ)
        region[drop] = 0
    return out


def kept_components(sizes: np.ndarray, keep_largest: bool, min_voxels: int) -> np.ndarray:
    """Which components a rule keeps, from their voxel counts (a count of 0 is never kept)."""
    keep = sizes >= max(min_voxels, 1)
    if keep_largest and sizes.size and sizes.max() > 0:
        keep &= np.arange(sizes.size) == sizes.argmax()
    return keep


def rules_in_voxels(rules: dict[int, tuple[bool, float]], affine: np.ndarray
                    ) -> dict[int, tuple[bool, int]]:
    """Per-organ rules with volumes in mm3 as clean_organs takes them, in voxels of a grid."""
    return {organ: (largest, voxels_for_volume(mm3, affine))
            for organ, (largest, mm3) in rules.items()}


def component_overlaps(prediction: np.ndarray, reference: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One organ's predicted components: each one's voxel count and its voxels inside the
    reference (what any choice of components scores, without redoing the labelling)."""
    components, sizes = _components(prediction)
    overlaps = np.bincount(components[reference], minlength=len(sizes))
    return sizes[1:], overlaps[1:]


def voxels_for_volume(volume_mm3: float, affine: np.ndarray) -> int:
    """How many voxels of this grid make up volume_mm3."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine)[:3, :3])))
    return int(np.ceil(volume_mm3 / voxel_mm3)) if volume_mm3 > 0 else 0
