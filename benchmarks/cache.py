"""Memory of training's in-memory case cache: every voxel's class index vs CLASS_LOCATIONS.

Generates phantoms, runs training's cache transforms over them both ways in the same process
(load, reorient, resample, body crop, uint8 label, class locations), and prints the bytes the
cache holds per case (image, label, class locations), the time, and the ratio.

    .venv/bin/python benchmarks/cache.py [--cases 4] [--spacing 1.5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medseg.manifest import load_manifest
from medseg.synth import write_synthetic_dataset
from medseg.transforms import CLASS_LOCATIONS, training_cache_transforms


def nbytes(value) -> int:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0


def cache_bytes(cases: list[dict], spacing, num_classes: int, class_locations) -> dict:
    transforms = training_cache_transforms(spacing, num_classes, class_locations)
    start = time.perf_counter()
    items = [transforms(dict(case)) for case in cases]
    seconds = time.perf_counter() - start
    parts = {key: sum(nbytes(item[key]) for item in items) / len(items)
             for key in ("image", "label", "label_cls_indices")}
    voxels = sum(item["image"].numel() for item in items) / len(items)
    return {"parts": parts, "total": sum(parts.values()), "voxels": voxels,
            "seconds": seconds / len(items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--spacing", type=float, default=1.5, help="training spacing, mm")
    args = parser.parse_args()
    spacing = (args.spacing,) * 3
    with tempfile.TemporaryDirectory() as tmp:
        cases, labels = load_manifest(write_synthetic_dataset(Path(tmp), args.cases, seed=5,
                                                              progress=False))
        rows = {"every voxel": cache_bytes(cases, spacing, len(labels), None),
                f"{CLASS_LOCATIONS} per class": cache_bytes(cases, spacing, len(labels),
                                                            CLASS_LOCATIONS)}
    print(f"{args.cases} phantoms at {args.spacing} mm, {len(labels)} classes; per cached case:")
    print("| class locations | voxels | image MB | label MB | locations MB | total MB | "
          "B/voxel | s/case |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        p = r["parts"]
        print(f"| {name} | {r['voxels'] / 1e6:.2f} M | {p['image'] / 1e6:.1f} | "
              f"{p['label'] / 1e6:.1f} | {p['label_cls_indices'] / 1e6:.1f} | "
              f"{r['total'] / 1e6:.1f} | {r['total'] / r['voxels']:.2f} | {r['seconds']:.2f} |")
    full, capped = rows.values()
    print(f"cache memory ratio (every voxel / capped): {full['total'] / capped['total']:.2f}x")


if __name__ == "__main__":
    main()
