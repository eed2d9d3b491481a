"""The outputs `medseg infer` writes beside a case's mask when asked (--output-type,
--statistics, --preview), and the folder's summaries of them (statistics.csv, index.html).
Each file is written atomically, before the mask that marks the case done."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medseg.data.files import case_name, write_json
from medseg.outputs.dicom import (
    DICOM_TYPES,
    SUFFIXES,
    check_dicom_input,
    frames_on_slices,
    source_slices,
    write_dicom_seg,
    write_rtstruct,
)

STATS_SUFFIX = ".stats.json"
PREVIEW_SUFFIX = ".preview.png"


def extra_outputs(scan: Path, out_dir: Path, options) -> list[Path]:
    """The files besides the mask (and its labels) that `options` ask for, for one scan."""
    case, out_dir = case_name(scan), Path(out_dir)
    paths = [out_dir / f"{case}{SUFFIXES[t]}" for t in options.output_types if t in DICOM_TYPES]
    if options.statistics:
        paths.append(out_dir / f"{case}{STATS_SUFFIX}")
    if options.preview:
        paths.append(out_dir / f"{case}{PREVIEW_SUFFIX}")
    return paths


def check_scans_fit(scans: list[Path], options) -> None:
    """Refuse, before any work, DICOM outputs for scans that are no DICOM series."""
    for scan in scans:
        check_dicom_input(options.output_types, scan)


def write_case_outputs(labels: dict[int, str], model_id: str, options, scan: torch.Tensor,
                       scan_path: Path, mask: np.ndarray, affine: np.ndarray, out_dir: Path
                       ) -> None:
    """DICOM-SEG, RTSTRUCT, statistics and preview of one case, those the options ask for;
    `labels` and `model_id` name what the mask holds and which model made it."""
    case = case_name(scan_path)
    out_dir = Path(out_dir)
    dicom = [t for t in options.output_types if t in DICOM_TYPES]
    if dicom:  # the series read and the mask put on its slices once, for both
        slices = source_slices(scan_path)
        frames = frames_on_slices(mask, affine, slices, scan_path)
        if "dicom-seg" in dicom:
            write_dicom_seg(frames, labels, slices, out_dir / f"{case}{SUFFIXES['dicom-seg']}",
                            model_id)
        if "rtstruct" in dicom:
            write_rtstruct(frames, labels, scan_path, slices,
                           out_dir / f"{case}{SUFFIXES['rtstruct']}")
    if not (options.statistics or options.preview):
        return
    image = scan[0].as_subclass(torch.Tensor).numpy()  # HU on the mask's grid
    if options.statistics:
        from medseg.outputs.statistics import organ_statistics

        write_json({"case": case, "source": str(scan_path), "model": model_id,
                    "organs": organ_statistics(mask, image, affine, labels)},
                   out_dir / f"{case}{STATS_SUFFIX}")
    if options.preview:
        from medseg.outputs.preview import write_preview

        write_preview(image, mask, affine, labels, out_dir / f"{case}{PREVIEW_SUFFIX}",
                      title=case)


def write_folder_outputs(scans: list[Path], out_dir: Path, options) -> None:
    """statistics.csv and index.html over every case of the folder that has its files."""
    out_dir = Path(out_dir)
    cases = [case_name(s) for s in scans]
    if options.statistics:
        from medseg.outputs.statistics import write_statistics_csv

        found = {c: out_dir / f"{c}{STATS_SUFFIX}" for c in cases}
        write_statistics_csv({c: json.loads(p.read_text())["organs"]
                              for c, p in found.items() if p.is_file()},
                             out_dir / "statistics.csv")
    if options.preview:
        from medseg.outputs.preview import write_index

        write_index(out_dir, [c for c in cases if (out_dir / f"{c}{PREVIEW_SUFFIX}").is_file()])
