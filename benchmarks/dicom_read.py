"""Reading a DICOM series folder: load_scan against load_scan plus a pass over every slice's
header, which is what the missing-slice check cost before it ran only on series that ITK marks
as unevenly spaced.

Times both on a synthetic 512 x 512 x N int16 CT series (and on ../shared's real series when it
is there), interleaved, and prints the fastest of each, the per-slice cost and the ratio.

    .venv/bin/python benchmarks/dicom_read.py [--slices 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.data.io import load_scan
from medseg.data.sitk_reader import _slice_positions, dicom_series_files

REAL_SERIES = Path(__file__).resolve().parents[2] / "shared/data/real/petct_dicom/dicom"


def write_series(folder: Path, slices: int) -> Path:
    """A 512 x 512 x slices CT series at 0.8 x 0.8 x 2.5 mm, body-like HU values."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    uid = "1.2.826.0.1.3680043.2.1125.77"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    y, x = np.mgrid[:512, :512]
    body = (x - 256) ** 2 / 200**2 + (y - 256) ** 2 / 150**2 < 1  # an elliptic body in air
    for k in range(slices):
        pixels = np.where(body, rng.normal(40, 20, (512, 512)), -1000).astype(np.int16)  # HU
        image = sitk.GetImageFromArray(pixels)
        image.SetSpacing((0.8, 0.8))
        for tag, value in {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 1}",
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": uid,
            "0020|0013": str(k + 1), "0020|0032": f"0\\0\\{2.5 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "0.8\\0.8",
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(image)
    return folder


def time_reads(folder: Path, repeats: int) -> dict:
    files = dicom_series_files(folder)
    best = {"load_scan": float("inf"), "load_scan + header pass": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        load_scan(folder)
        best["load_scan"] = min(best["load_scan"], time.perf_counter() - start)
        start = time.perf_counter()
        load_scan(folder)
        _slice_positions(files)
        best["load_scan + header pass"] = min(best["load_scan + header pass"],
                                              time.perf_counter() - start)
    return {"slices": len(files), **best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        series = {f"synthetic 512x512x{args.slices}": write_series(Path(tmp) / "ct", args.slices)}
        if REAL_SERIES.is_dir():
            series["real PET/CT series"] = REAL_SERIES
        print("| series | slices | load_scan s | with header pass s | header pass ms/slice | "
              "ratio |")
        print("|---|---|---|---|---|---|")
        for name, folder in series.items():
            r = time_reads(folder, args.repeats)
            now, before = r["load_scan"], r["load_scan + header pass"]
            print(f"| {name} | {r['slices']} | {now:.3f} | {before:.3f} | "
                  f"{(before - now) / r['slices'] * 1e3:.2f} | {before / now:.2f}x |")


if __name__ == "__main__":
    main()
