"""What the outputs beside the NIfTI mask cost (`medseg infer --output-type dicom-seg
--output-type rtstruct --statistics --preview`), and that the NIfTI output itself did not get
slower.

    python -m benchmarks.outputs --output runs/outputs [--model runs/crf/real_resunet]

Real: the real DICOM series in ../shared/data segmented by a model fitted to it (benchmarks/crf.py's
recipe; --model reuses one), once per output set, interleaved and repeated: the whole
`medseg infer` time with the NIfTI mask alone and with each extra output. Large: a phantom
written as a 512 x 512 x N DICOM series (--slices), its true mask given to each writer directly,
timed against writing the NIfTI mask; and the NIfTI mask written as before this feature (no
label table) against now (header label table and CASE.labels.json). Prints one Markdown table
per part; the preview of the real case goes to OUTPUT/real_all/dicom.preview.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from medseg.runtime import tune_allocator

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "petct_dicom"
OUTPUT_SETS = {
    "nifti": {},
    "dicom-seg": {"output_types": ("nifti", "dicom-seg")},
    "rtstruct": {"output_types": ("nifti", "rtstruct")},
    "statistics": {"statistics": True},
    "preview": {"preview": True},
    "all": {"output_types": ("nifti", "dicom-seg", "rtstruct"), "statistics": True,
            "preview": True},
}


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def real_case(model: Path, out: Path, repeats: int) -> dict[str, float]:
    """Fastest `medseg infer` wall time on the real series per output set (model loaded once)."""
    from medseg.api import Segmenter

    series = REAL / "dicom"
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, options in OUTPUT_SETS.items():
            segmenter = Segmenter(model, overwrite=True, **options)
            seconds, results = timed(segmenter.segment_folder, series, out / f"real_{name}")
            assert results[0].status == "done", results[0].error
            best[name] = min(best.get(name, float("inf")), seconds)
    return best


def large_series(folder: Path, slices: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """A phantom as a 512 x 512 x `slices` DICOM series (written once), and its mask and
    affine on the series' grid as medseg reads it."""
    import SimpleITK as sitk

    from medseg.data.io import load_scan
    from medseg.data.phantoms import make_phantom

    series = folder / "large_dicom"
    phantom = make_phantom(0, spacing=(0.8, 0.8, 1.0), orientation="LPS")
    image, label = phantom.image, phantom.label
    shape = (512, 512, slices)

    def fitted(volume, fill):
        out = np.full(shape, fill, dtype=volume.dtype)
        crop = [slice(0, min(a, b)) for a, b in zip(shape, volume.shape)]
        out[tuple(crop)] = volume[tuple(crop)]
        return out

    image, label = fitted(image.astype(np.int16), -1024), fitted(label, 0)
    if not series.is_dir():
        series.mkdir(parents=True)
        volume = sitk.GetImageFromArray(np.transpose(image, (2, 1, 0)))
        volume.SetSpacing((0.8, 0.8, 1.0))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        uid = "1.2.826.0.1.3680043.8.498."
        tags = {"0008|0060": "CT", "0020|000d": uid + "1", "0020|000e": uid + "2",
                "0020|0052": uid + "3", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                "0020|0037": "1\\0\\0\\0\\1\\0"}
        for k in range(slices):
            plane = volume[:, :, k]
            for tag, value in tags.items():
                plane.SetMetaData(tag, value)
            plane.SetMetaData("0020|0032", f"0\\0\\{k * 1.0}")
            plane.SetMetaData("0020|0013", str(k + 1))
            plane.SetMetaData("0008|0018", f"{uid}4.{k + 1}")
            writer.SetFileName(str(series / f"{k:04d}.dcm"))
            writer.Execute(plane)
    scan = load_scan(series)
    # The series was written in LPS index order, as medseg reads it back (checked below).
    affine = np.asarray(scan.affine, dtype=float)
    assert scan.shape[1:] == shape, scan.shape
    return series, label, affine


def large_case(folder: Path, slices: int, repeats: int) -> dict[str, float]:
    """Each writer's fastest time for the large series' mask."""
    from medseg.data.io import load_scan, save_nifti
    from medseg.data.mask_labels import write_labels_file
    from medseg.data.phantoms import SYNTHETIC_LABELS
    from medseg.outputs.dicom import (
        frames_on_slices,
        source_slices,
        write_dicom_seg,
        write_rtstruct,
    )
    from medseg.outputs.preview import write_preview
    from medseg.outputs.statistics import organ_statistics

    series, mask, affine = large_series(folder, slices)
    image = load_scan(series)[0].numpy()
    labels = SYNTHETIC_LABELS
    out = folder / "large_out"
    slices = source_slices(series)

    def on_slices():
        return frames_on_slices(mask, affine, source_slices(series), series)

    jobs = {
        "nifti as before (no label table)": lambda: save_nifti(mask, affine, out / "a.nii.gz"),
        "nifti now (label table + labels.json)": lambda: (
            save_nifti(mask, affine, out / "b.nii.gz", labels=labels),
            write_labels_file(labels, out / "b.nii.gz")),
        # Each as `medseg infer` writes it alone: the series read, the mask put on its slices.
        "dicom-seg": lambda: write_dicom_seg(on_slices(), labels, slices, out / "c.seg.dcm",
                                             "benchmark"),
        "rtstruct": lambda: write_rtstruct(on_slices(), labels, series, slices,
                                           out / "c.rtstruct.dcm"),
        "statistics": lambda: organ_statistics(mask, image, affine, labels),
        "preview": lambda: write_preview(image, mask, affine, labels, out / "c.preview.png", "c"),
    }
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, job in jobs.items():
            best[name] = min(best.get(name, float("inf")), timed(job)[0])
    return best


def table(times: dict[str, float], baseline: str, title: str) -> str:
    lines = [f"| {title} | seconds | x {baseline} |", "|---|---|---|"]
    lines += [f"| {name} | {s:.2f} | {s / times[baseline]:.2f} |" for name, s in times.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("runs/outputs"))
    parser.add_argument("--model", type=Path, default=None,
                        help="a model fitted to the real series [default: fit one as "
                             "benchmarks/crf.py does, 30 epochs]")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    tune_allocator()
    args.output.mkdir(parents=True, exist_ok=True)
    results = {}
    if REAL.is_dir():
        from benchmarks.crf import real_run

        model = args.model or real_run("resunet", args.output, 30)
        results["real"] = real_case(model, args.output, args.repeats)
        print(table(results["real"], "nifti", "real series, medseg infer with"))
    results["large"] = large_case(args.output, args.slices, args.repeats)
    print(table(results["large"], "nifti as before (no label table)",
                f"512 x 512 x {args.slices} DICOM series, writing"))
    print(f"load average {os.getloadavg()[0]:.2f}")
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
