"""Per-organ metrics of one prediction against one reference, in millimetres and millilitres.

Overlap (Dice, IoU, volumes) comes from voxel counts; surface metrics are MONAI's own
(`compute_hausdorff_distance`, `compute_surface_dice`) run on each organ's bounding box instead of
the whole scan. Outside the box both masks are empty, so the answer is the same as on the full
volume (tests check this), at a fraction of the cost on a 512 x 512 x 400 CT.

Empty organs: absent from both sides -> every metric NaN (status "both_empty", left out of
summaries). Absent from one side -> Dice, IoU and NSD 0, HD95 NaN (a distance to nothing is
undefined) with status "pred_empty" (missed organ) or "ref_empty" (spurious organ), counted
separately in the summary so a missed organ never hides behind a good mean HD95.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.ndimage import find_objects

Box = tuple[slice, ...]
METRICS = ("dice", "iou", "hd95_mm", "nsd", "ref_volume_ml", "pred_volume_ml", "volume_diff_ml")
# Keeps MONAI's own 1-voxel edge crop inside ours; anything >= 0 gives identical numbers.
BOX_MARGIN = 1


def label_boxes(volume: np.ndarray) -> dict[int, Box]:
    """Bounding box of every label > 0 present in a label volume, in one pass."""
    if volume.flags.f_contiguous and not volume.flags.c_contiguous:
        # find_objects walks memory in C order: walking a Fortran-ordered NIfTI array as its
        # (C-ordered) transpose took 0.2 s instead of 2.5 s for 512 x 512 x 400.
        return {label: box[::-1] for label, box in label_boxes(volume.T).items()}
    return {i + 1: box for i, box in enumerate(find_objects(volume)) if box is not None}


def union_box(boxes: list[Box], shape: tuple[int, ...], margin=BOX_MARGIN) -> Box:
    """The box holding all `boxes`, grown by `margin` voxels (per axis or all) within `shape`."""
    margins = np.broadcast_to(margin, len(shape))
    return tuple(slice(max(0, min(b[d].start for b in boxes) - int(margins[d])),
                       min(shape[d], max(b[d].stop for b in boxes) + int(margins[d])))
                 for d in range(len(shape)))


def overlap_metrics(ref: np.ndarray, pred: np.ndarray) -> dict:
    """Voxel counts, Dice and IoU of two boolean masks (NaN when both are empty)."""
    tp = int(np.count_nonzero(ref & pred))
    ref_n, pred_n = int(np.count_nonzero(ref)), int(np.count_nonzero(pred))
    union = ref_n + pred_n - tp
    return {"ref_voxels": ref_n, "pred_voxels": pred_n,
            "dice": 2 * tp / (ref_n + pred_n) if union else math.nan,
            "iou": tp / union if union else math.nan}


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """A boolean mask as MONAI's one-channel batch (1, 1, X, Y, Z)."""
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None]


def hd95_mm(ref: np.ndarray, pred: np.ndarray, spacing) -> float:
    """MONAI's 95th-percentile Hausdorff distance in mm of two non-empty boolean masks."""
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        return float(compute_hausdorff_distance(_as_batch(pred), _as_batch(ref),
                                                include_background=True, percentile=95,
                                                spacing=list(spacing))[0, 0])


def nsd(ref: np.ndarray, pred: np.ndarray, spacing, tolerance_mm: float) -> float:
    """MONAI's normalised surface Dice of two non-empty boolean masks at a tolerance in mm."""
    from monai.metrics import compute_surface_dice

    # Subvoxel surfaces weight each boundary element by its area in mm^2 (DeepMind's NSD), so a
    # face across thick slices counts for the area it covers, not for how many voxels it has.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return float(compute_surface_dice(_as_batch(pred), _as_batch(ref), [float(tolerance_mm)],
                                          include_background=True, spacing=list(spacing),
                                          use_subvoxels=True)[0, 0])


def empty_status(ref_voxels: int, pred_voxels: int) -> str:
    """'present', 'both_empty', 'pred_empty' (missed) or 'ref_empty' (spurious)."""
    if ref_voxels and pred_voxels:
        return "present"
    if not ref_voxels and not pred_voxels:
        return "both_empty"
    return "pred_empty" if ref_voxels else "ref_empty"


def organ_metrics(ref: np.ndarray, pred: np.ndarray, spacing, voxel_ml: float,
                  tolerance_mm: float) -> dict:
    """Every metric of one organ from its two boolean masks, with the empty-organ policy."""
    counts = overlap_metrics(ref, pred)
    status = empty_status(counts["ref_voxels"], counts["pred_voxels"])
    if status == "present":
        surface = {"hd95_mm": hd95_mm(ref, pred, spacing),
                   "nsd": nsd(ref, pred, spacing, tolerance_mm)}
    else:
        surface = {"hd95_mm": math.nan, "nsd": math.nan if status == "both_empty" else 0.0}
    ref_ml, pred_ml = counts["ref_voxels"] * voxel_ml, counts["pred_voxels"] * voxel_ml
    return {"status": status, "dice": counts["dice"], "iou": counts["iou"], **surface,
            "ref_volume_ml": ref_ml, "pred_volume_ml": pred_ml, "volume_diff_ml": pred_ml - ref_ml,
            "ref_voxels": counts["ref_voxels"], "pred_voxels": counts["pred_voxels"]}


def case_metrics(ref: np.ndarray, pred: np.ndarray, organs: list[tuple[str, int, int]],
                 spacing, voxel_ml: float, tolerance_mm: float,
                 boxes: tuple[dict, dict] | None = None) -> list[dict]:
    """One row per organ (name, ref id, pred id), each computed on the organ's bounding box."""
    ref_boxes, pred_boxes = boxes or (label_boxes(ref), label_boxes(pred))
    rows = []
    for name, ref_id, pred_id in organs:
        found = [b for b in (ref_boxes.get(ref_id), pred_boxes.get(pred_id)) if b is not None]
        if found:
            box = union_box(found, ref.shape)
            ref_mask, pred_mask = ref[box] == ref_id, pred[box] == pred_id
        else:
            ref_mask = pred_mask = np.zeros((1,) * ref.ndim, bool)
        rows.append({"organ": name, **organ_metrics(ref_mask, pred_mask, spacing, voxel_ml,
                                                    tolerance_mm)})
    return rows
