"""Preview pictures: the CT in a soft-tissue window with the organs in fixed colours, in axial,
coronal and sagittal views, radiological convention (the patient's right on the viewer's left,
anterior and superior up, sagittal facing left), each view drawn at its true size in mm."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from medseg.data.files import atomic_output, save_png
from medseg.data.geometry import radiological_plane, ras_orientation
from medseg.data.organ_codes import colours

SOFT_TISSUE = (-160.0, 240.0)  # HU: window 400, level 40
ALPHA = 0.45
VIEW_AXES = {"axial": 2, "coronal": 1, "sagittal": 0}  # the RAS axis each view cuts
# Letters at the left, right, bottom and top edges of each view (what lies that way).
EDGES = {"axial": "RLPA", "coronal": "RLIS", "sagittal": "APIS"}


@dataclass
class View:
    name: str
    ct: np.ndarray  # HU, rows x columns, for imshow(origin="lower")
    labels: np.ndarray
    extent: tuple[float, float, float, float]  # mm: left, right, bottom, top


def preview_views(image: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> list[View]:
    """Axial, coronal and sagittal views, each through the slice holding most organ voxels (the
    middle slice when there are none)."""
    ornt, spacing = ras_orientation(affine)
    ct = nib.orientations.apply_orientation(image, ornt)
    labels = nib.orientations.apply_orientation(mask, ornt)
    organs = labels > 0
    views = []
    for name, axis in VIEW_AXES.items():
        others = tuple(a for a in range(3) if a != axis)
        counts = organs.sum(axis=others)
        index = int(np.argmax(counts)) if counts.any() else labels.shape[axis] // 2
        rows, columns = others[1], others[0]
        ct_plane = radiological_plane(ct, axis, index)
        extent = (0.0, ct_plane.shape[1] * spacing[columns], 0.0,
                  ct_plane.shape[0] * spacing[rows])
        views.append(View(name, ct_plane, radiological_plane(labels, axis, index), extent))
    return views


def overlay_rgb(view: View, palette: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """The view's CT in the soft-tissue window, organs blended in their colours (RGB, 0..1)."""
    low, high = SOFT_TISSUE
    grey = np.clip((view.ct - low) / (high - low), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label_id, colour in palette.items():
        where = view.labels == label_id
        if where.any():
            rgb[where] = (1 - ALPHA) * rgb[where] + ALPHA * np.asarray(colour) / 255
    return rgb


def write_preview(image: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                  labels: dict[int, str], target: Path, title: str) -> Path:
    """One PNG: the three views side by side, each at its true proportions in mm (a thin slab's
    coronal and sagittal views are strips), and a legend of the organs found."""
    views = preview_views(image, mask, affine)
    palette = colours(labels)
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(1, 3)
    for ax, view in zip(axes, views):
        ax.imshow(overlay_rgb(view, palette), origin="lower", extent=view.extent,
                  interpolation="nearest", aspect="equal")
        ax.set_title(view.name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        left, right, bottom, top = EDGES[view.name]
        width, height = view.extent[1], view.extent[3]
        for text, xy, align in ((left, (0.02, 0.5), "left"), (right, (0.98, 0.5), "right"),
                                (bottom, (0.5, 0.02), "center"), (top, (0.5, 0.98), "center")):
            ax.text(*xy, text, transform=ax.transAxes, color="yellow", fontsize=8, ha=align,
                    va="bottom" if text == bottom else "top" if text == top else "center")
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
    present = [i for i in sorted(palette) if (mask == i).any()]
    handles = [Patch(color=np.asarray(palette[i]) / 255, label=labels[i]) for i in present]
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return save_png(fig, target, dpi=100)


def write_index(out_dir: Path, cases: list[str]) -> Path:
    """index.html: every case's preview, with its organ volumes and mean HU when
    CASE.stats.json is there; links are relative, so the folder moves as a whole."""
    parts = ["<!doctype html><meta charset='utf-8'><title>medseg previews</title>",
             "<style>body{font-family:sans-serif}img{max-width:100%}table{border-collapse:"
             "collapse}td,th{padding:2px 8px;text-align:right}</style>",
             f"<h1>medseg previews ({len(cases)} cases)</h1>"]
    for case in sorted(cases):
        name = html.escape(case)
        parts.append(f"<h2 id='{name}'>{name}</h2>")
        picture = f"{case}.preview.png"
        if (out_dir / picture).is_file():
            parts.append(f"<img src='{html.escape(picture)}' alt='{name} preview'>")
        stats_file = out_dir / f"{case}.stats.json"
        if stats_file.is_file():
            organs = json.loads(stats_file.read_text())["organs"]
            rows = "".join(
                f"<tr><th>{html.escape(o)}</th><td>{s['volume_ml']:.1f}</td>"
                f"<td>{'' if s['hu_mean'] is None else format(s['hu_mean'], '.0f')}</td>"
                f"<td>{'cut off? (' + ', '.join(s['cut_at']) + ')' if s['touches_edge'] else ''}"
                f"</td></tr>" for o, s in organs.items() if s["voxels"])
            parts.append("<table><tr><th>organ</th><th>volume (ml)</th><th>mean HU</th>"
                         f"<th>reaches the scan's edge</th></tr>{rows}</table>")
    target = out_dir / "index.html"
    with atomic_output(target) as tmp:
        tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return target
