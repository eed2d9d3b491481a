"""PNG figures with matplotlib's object API (Agg, no display needed): metric box plots and
best/worst-case overlays for evaluation reports."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from medseg.data.files import save_png
from medseg.data.geometry import radiological_plane, ras_orientation, voxel_spacing
from medseg.evaluation.metrics import label_boxes, union_box

METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 (mm)", "nsd": "NSD",
                 "volume_diff_ml": "volume difference, prediction - reference (ml)"}
# Colour-blind-safe agreement colours (RGB) for overlays.
OVERLAY_COLOURS = {"agree": (0.30, 0.75, 0.45), "missed": (0.25, 0.45, 1.00),
                   "spurious": (1.00, 0.55, 0.10), "other organs": (0.35, 0.35, 0.35)}
CONTEXT_MM = 15.0  # shown around each organ's box
VIEWS = ("axial", "coronal", "sagittal")


def metric_boxplot(rows: list[dict], metric: str, organs: list[str], path: Path) -> Path:
    """One horizontal box per organ (cases as dots) for one metric; both-empty rows left out."""
    values = [np.array([r[metric] for r in rows if r["organ"] == organ
                        and r["status"] != "both_empty"], float) for organ in organs]
    values = [v[~np.isnan(v)] for v in values]
    fig = Figure(figsize=(7.5, 1.2 + 0.35 * len(organs)), layout="constrained")
    ax = fig.add_subplot()
    shown = [i for i, v in enumerate(values) if v.size]
    if shown:
        ax.boxplot([values[i] for i in shown], positions=shown, orientation="horizontal",
                   widths=0.6, showfliers=False)
        rng = np.random.default_rng(0)  # jitter only; same picture every run
        for i in shown:
            ax.plot(values[i], i + rng.uniform(-0.15, 0.15, values[i].size), ".", color="0.3",
                    alpha=0.6)
    ax.set_yticks(range(len(organs)), [o if values[i].size else f"{o} (n/a)"
                                       for i, o in enumerate(organs)])
    ax.set_ylim(len(organs) - 0.5, -0.5)
    if metric in ("dice", "iou", "nsd"):
        ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(METRIC_TITLES.get(metric, metric))
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, path)


def agreement_image(ref: np.ndarray, pred: np.ndarray, context: np.ndarray) -> np.ndarray:
    """RGB image of one 2D slice: agreement, missed and spurious voxels, other organs in grey."""
    image = np.zeros((*ref.shape, 3))
    for key, where in (("other organs", context & ~ref & ~pred), ("agree", ref & pred),
                       ("missed", ref & ~pred), ("spurious", pred & ~ref)):
        image[where] = OVERLAY_COLOURS[key]
    return image


def organ_slices(ref: np.ndarray, pred: np.ndarray, spacing, ref_id: int,
                 pred_id: int) -> list[tuple]:
    """(image, extent in mm) of three views through one organ's centre, from RAS+ crops."""
    ref_mask, pred_mask = ref == ref_id, pred == pred_id
    centre_of = ref_mask if ref_mask.any() else pred_mask
    centre = [int(round(c.mean())) for c in np.nonzero(centre_of)]
    out = []
    for axis in (2, 1, 0):  # axial, coronal, sagittal
        # Superior/anterior up, the patient's right on the viewer's left.
        planes = [radiological_plane(m, axis, centre[axis]) for m in (ref_mask, pred_mask,
                                                                      ref > 0)]
        rows, cols = [d for d in range(3) if d != axis][::-1]
        extent = (0, planes[0].shape[1] * spacing[cols], 0, planes[0].shape[0] * spacing[rows])
        out.append((agreement_image(*planes), extent))
    return out


def overlay_figure(ref: np.ndarray, pred: np.ndarray, affine: np.ndarray,
                   organs: list[tuple[str, int, int]], path: Path, title: str) -> Path:
    """Axial, coronal and sagittal views through each organ of one case, coloured by agreement."""
    ref_boxes, pred_boxes = label_boxes(ref), label_boxes(pred)
    margin = [int(math.ceil(CONTEXT_MM / s)) for s in voxel_spacing(affine)]
    ornt, spacing = ras_orientation(affine)
    shown = []
    for name, ref_id, pred_id in organs:
        found = [b for b in (ref_boxes.get(ref_id), pred_boxes.get(pred_id)) if b is not None]
        if found:
            # Only the crop around the organ is turned into RAS+, never the whole volume.
            box = union_box(found, ref.shape, margin)
            crops = [nib.orientations.apply_orientation(v[box], ornt) for v in (ref, pred)]
            shown.append((name, *crops, ref_id, pred_id))
    per_row = 2 if len(shown) > 1 else 1
    n_rows = max(1, math.ceil(len(shown) / per_row))
    fig = Figure(figsize=(2.3 * 3 * per_row, 2.3 * n_rows + 0.8), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(n_rows, 3 * per_row, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (name, ref_crop, pred_crop, ref_id, pred_id) in enumerate(shown):
        views = organ_slices(ref_crop, pred_crop, spacing, ref_id, pred_id)
        for j, (image, extent) in enumerate(views):
            ax = axes[i // per_row, (i % per_row) * 3 + j]
            ax.imshow(image, origin="lower", extent=extent, interpolation="nearest")
            ax.set_title(f"{name} - {VIEWS[j]}", fontsize=8)
    fig.legend(handles=[Patch(color=c, label=k) for k, c in OVERLAY_COLOURS.items()],
               loc="outside lower center", ncols=4, fontsize=8)
    return save_png(fig, path)
