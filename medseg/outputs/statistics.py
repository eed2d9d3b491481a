"""Per-organ numbers of a segmented scan: volume, Hounsfield units, extent, and whether the organ
reaches the edge of the scan (then it is probably cut off and its volume too small)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medseg.data.files import atomic_output
from medseg.data.geometry import voxel_volume_ml

FIELDS = ("volume_ml", "voxels", "hu_mean", "hu_median", "hu_std", "hu_p5", "hu_p95",
          "bbox_min_ras_mm", "bbox_max_ras_mm", "touches_edge", "cut_at")
SIDES = {"R": "right", "L": "left", "A": "anterior", "P": "posterior", "S": "superior",
         "I": "inferior"}
OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def organ_statistics(mask: np.ndarray, image: np.ndarray, affine: np.ndarray,
                     labels: dict[int, str]) -> dict[str, dict]:
    """{organ name: statistics} for every organ of `labels` (absent ones: volume 0, no HU).

    HU percentiles are numpy's (linear interpolation); the bounding box holds the organ's
    outermost voxel centres in NIfTI world coordinates (RAS, mm; DICOM's LPS negates x and y);
    `cut_at` names the scan faces the organ touches (in patient directions)."""
    boxes = ndimage.find_objects(mask, max_label=max(labels))
    axis_codes = nib.aff2axcodes(affine)
    return {name: _one_organ(mask, image, affine, label_id, boxes[label_id - 1], axis_codes)
            for label_id, name in sorted(labels.items()) if label_id}


def _one_organ(mask, image, affine, label_id, box, axis_codes) -> dict:
    empty = {field: None for field in FIELDS} | {"volume_ml": 0.0, "voxels": 0,
                                                  "touches_edge": False, "cut_at": []}
    if box is None:
        return empty
    inside = mask[box] == label_id
    hu = image[box][inside].astype(np.float64)
    p5, median, p95 = np.percentile(hu, [5, 50, 95])
    # find_objects' box is the organ's own extent: its first and last voxels along each axis.
    extent = np.array([[sl.start for sl in box], [sl.stop - 1 for sl in box]])
    corners = nib.affines.apply_affine(affine, extent)
    cut = []
    for axis, (s, size) in enumerate(zip(box, mask.shape)):
        if s.start == 0:
            cut.append(SIDES[OPPOSITE[axis_codes[axis]]])
        if s.stop == size:
            cut.append(SIDES[axis_codes[axis]])
    return {"volume_ml": float(inside.sum()) * voxel_volume_ml(affine),
            "voxels": int(inside.sum()), "hu_mean": float(hu.mean()),
            "hu_median": float(median), "hu_std": float(hu.std()), "hu_p5": float(p5),
            "hu_p95": float(p95), "bbox_min_ras_mm": corners.min(0).round(2).tolist(),
            "bbox_max_ras_mm": corners.max(0).round(2).tolist(), "touches_edge": bool(cut),
            "cut_at": cut}


def write_statistics_csv(per_case: dict[str, dict[str, dict]], target: Path) -> Path:
    """statistics.csv: one row per case and organ, the fields of organ_statistics."""
    with atomic_output(target) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "organ", *FIELDS])
        for case, organs in sorted(per_case.items()):
            for organ, stats in organs.items():
                writer.writerow([case, organ, *(_cell(stats[field]) for field in FIELDS)])
    return target


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
