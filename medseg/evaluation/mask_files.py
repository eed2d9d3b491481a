"""The masks a folder holds for evaluation, and the label map they describe themselves with.

A case is a mask file (NIfTI, NRRD, MHA), or a folder of one mask file per organ as
TotalSegmentator writes by default (case/liver.nii.gz, case/spleen.nii.gz, ...: each file is
that organ, > 0 inside). A mask's label map comes from its CASE.labels.json or its header's
label table (medseg.data.mask_labels); an organ folder's from its file names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.annotations import organ_files, organ_folder_masks
from medseg.data.files import case_name
from medseg.data.io import list_scans
from medseg.data.labels import canonical_name
from medseg.data.mask_labels import described_labels
from medseg.errors import MedsegError


def is_organ_folder(path: Path) -> bool:
    return bool(organ_files(path))


def list_cases(path: Path, single_case: str | None = None) -> dict[str, Path]:
    """{case name: mask file or organ folder}. A folder of organ files passed for one case
    (`single_case`, when the other side is one file) is that case."""
    path = Path(path)
    if single_case is not None and path.is_dir():
        names = {case_name(p) for p in organ_files(path)}
        if names and single_case not in names:
            return {single_case: path}
    return {case_name(p): p for p in list_scans(path)}


def organ_folder_labels(folders: list[Path]) -> dict[int, str]:
    """One label map for organ folders: background, then every organ file name met, sorted."""
    names = sorted({case_name(p) for folder in folders for p in organ_files(folder)})
    return {0: "background", **{i: name for i, name in enumerate(names, start=1)}}


def folder_labels(cases: list[Path]) -> dict[int, str] | None:
    """The label map the masks of a folder describe themselves with (organ file names, each
    mask's CASE.labels.json or header), or None when they do not. Masks whose own maps give one
    id two names are refused."""
    if cases and all(is_organ_folder(c) for c in cases):
        return organ_folder_labels(cases)
    merged: dict[int, str] = {}
    for mask in cases:
        own = described_labels(mask) if not is_organ_folder(mask) else None
        if own is None:
            return None
        for label_id, name in own.items():
            if canonical_name(merged.setdefault(label_id, name)) != canonical_name(name):
                raise MedsegError(f"{mask}: its label {label_id} is {name!r}, another mask's is "
                                  f"{merged[label_id]!r}; pass one label map (--labels)")
    return merged or None


def load_organ_folder(folder: Path, labels: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """One label volume from a folder of organ files (ids from `labels`, by organ name), and
    its affine; every file must share the first one's grid."""
    ids = {canonical_name(name): i for i, name in labels.items()}
    for path in organ_files(folder):  # before any is read: a name the map lacks is refused
        if canonical_name(case_name(path)) not in ids:
            raise MedsegError(f"{path}: organ {case_name(path)!r} is not in the label map; pass "
                              "a label map that names it, or remove the file")
    volume, affine = None, None
    for path, mask, grid in organ_folder_masks(folder):
        affine = grid
        if volume is None:
            volume = np.zeros(mask.shape, dtype=np.uint8 if max(labels) < 256 else np.uint16)
        volume[mask] = ids[canonical_name(case_name(path))]
    return volume, affine
