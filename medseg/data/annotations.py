"""Annotations as they come from planning systems, PACS and other tools, read onto an image's
voxel grid: RTSTRUCT (closed planar contours, rasterised) and DICOM-SEG (frames placed by their
patient positions), each giving {organ name: boolean mask}, and folders of one mask file per
organ (TotalSegmentator's layout: case/liver.nii.gz, ...), read one organ at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medseg.data.files import case_name, scan_suffix
from medseg.data.io import load_mask
from medseg.data.scan_checks import onto_axes_of, same_grid
from medseg.data.sitk_reader import dicom_series_files
from medseg.errors import MedsegError

LPS = np.array([-1.0, -1.0, 1.0])  # DICOM patient (LPS) <-> NIfTI world (RAS)
ON_SLICE = 1e-2  # voxels: a contour or frame farther than this from a slice is refused
# A DICOM-SEG needs a segment: medseg writes this one, empty, for a mask without organs
# (medseg.outputs.dicom), and reading it back finds no organ in it.
EMPTY_SEGMENT_LABEL = "no organ found"


def organ_files(folder: Path) -> list[Path]:
    """The mask files (NIfTI, NRRD, MHA) of a folder, sorted; empty for anything else (a DICOM
    series folder)."""
    if not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and scan_suffix(p))


def organ_folder_masks(folder: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(organ file, its mask (> 0), the grid's affine) for each file of an organ folder, one
    at a time (a TotalSegmentator folder has over a hundred), every mask with its axes in the
    first file's order; a file on another grid than the first is refused."""
    first = None
    for path in organ_files(folder):
        array, affine = load_mask(path)
        check_whole_numbers(array, path)
        if first is None:
            first = (path, array.shape, affine)
        elif not same_grid(first[1], first[2], array.shape, affine):
            raise MedsegError(f"{path}: not on the grid of {first[0].name} in the same folder; "
                              "an organ folder's files share one grid")
        yield path, onto_axes_of(np.asarray(array) > 0, affine, first[2]), first[2]


def check_whole_numbers(array: np.ndarray, path: Path) -> None:
    """An organ mask holds whole numbers; a probability map (0.37, ...) is no mask, and taking
    every non-zero voxel would paint the organ over its whole surroundings."""
    if np.issubdtype(array.dtype, np.floating):
        fractional = array[array != np.round(array)]
        if fractional.size:
            raise MedsegError(f"{path}: holds non-integer values (e.g. {float(fractional[0]):g}): "
                              "a probability map, not a mask; threshold it (at 0.5, say) and "
                              "save it with whole numbers")


def annotation_names(path: Path) -> list[str]:
    """The organ names an annotation holds, from its header alone (its files, for a folder)."""
    import pydicom

    if path.is_dir():
        return [case_name(p) for p in organ_files(path)]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.Modality == "SEG":
        return [str(s.SegmentLabel) for s in ds.SegmentSequence
                if str(s.SegmentLabel) != EMPTY_SEGMENT_LABEL]
    return [str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])]


def referenced_series(path: Path) -> set[str]:
    """The SeriesInstanceUIDs an RTSTRUCT or DICOM-SEG says it was drawn on (empty UIDs, as
    de-identification leaves them, are left out)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    series = list(ds.get("ReferencedSeriesSequence", []))  # DICOM-SEG
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):  # RTSTRUCT
        for study in frame.get("RTReferencedStudySequence", []):
            series += list(study.get("RTReferencedSeriesSequence", []))
    return {str(s.get("SeriesInstanceUID", "")) for s in series} - {""}


def series_uid(scan: Path) -> str:
    """A DICOM series folder's SeriesInstanceUID ('' for other scans, or none recorded)."""
    import pydicom

    if not Path(scan).is_dir():
        return ""
    first = dicom_series_files(Path(scan))[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).get("SeriesInstanceUID", ""))


def dicom_modality(path: Path) -> str | None:
    """The Modality of a DICOM file ('RTSTRUCT', 'SEG', ...), None for anything else."""
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
                   .get("Modality", "")) or None
    except Exception:  # noqa: BLE001 - not DICOM: not an annotation
        return None


def plane_voxels(position, orientation, pixel_spacing, rows: int, columns: int,
                 inverse_affine: np.ndarray, shape) -> tuple[np.ndarray, ...] | None:
    """Index arrays (rows x columns each) of the voxels under every pixel of a DICOM image plane
    (ImagePositionPatient, ImageOrientationPatient, PixelSpacing: PS3.3 C.7.6.2.1.1), or None
    when the plane's pixels are not voxel centres of the grid (`shape`, the inverse of its RAS
    affine). A pixel's position is linear in its row and column, so its index is start +
    row x row_step + column x column_step: the three vectors must be whole numbers, and the
    indices are then exact integers."""
    position = np.asarray(position, dtype=float)
    orientation = np.asarray(orientation, dtype=float)
    row_spacing, column_spacing = (float(v) for v in pixel_spacing)
    to_index = inverse_affine[:3, :3] * LPS  # an LPS point -> its voxel index (+ the offset)
    # Along a row the column index grows (first direction cosine), down a column the row index.
    start = to_index @ position + inverse_affine[:3, 3]
    column_step = to_index @ (column_spacing * orientation[:3])
    row_step = to_index @ (row_spacing * orientation[3:])
    whole = [np.rint(v) for v in (start, row_step, column_step)]
    off = max(float(np.abs(start - whole[0]).max()),
              max(rows, columns) * float(np.abs(np.r_[row_step, column_step]
                                                - np.r_[whole[1], whole[2]]).max()))
    corners = [whole[0] + r * whole[1] + c * whole[2]
               for r in (0, rows - 1) for c in (0, columns - 1)]
    inside = all((0 <= corner).all() and (corner < np.array(shape)).all() for corner in corners)
    if off > ON_SLICE or not inside:
        return None
    r = np.arange(rows, dtype=np.intp)[:, None]
    c = np.arange(columns, dtype=np.intp)[None, :]
    start, row_step, column_step = (v.astype(np.intp) for v in whole)
    return tuple(start[a] + r * row_step[a] + c * column_step[a] for a in range(3))


def _to_voxels(lps_points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    ras = np.asarray(lps_points, dtype=float) * LPS
    return ras @ inverse[:3, :3].T + inverse[:3, 3]


def rtstruct_masks(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> dict[str, np.ndarray]:
    """Every ROI of an RTSTRUCT as a mask on the image grid: each closed planar contour filled
    (pixel centres on or inside it, OpenCV's rule), contours of one slice combined even-odd (an
    inner contour is a hole). The image's slices must be the contours' planes (axis 2)."""
    import cv2
    import pydicom

    ds = pydicom.dcmread(path)
    names = {roi.ROINumber: str(roi.ROIName) for roi in ds.get("StructureSetROISequence", [])}
    masks: dict[str, np.ndarray] = {}
    for roi in ds.get("ROIContourSequence", []):
        name = names.get(roi.ReferencedROINumber, f"roi_{roi.ReferencedROINumber}")
        volume = masks.setdefault(name, np.zeros(shape, dtype=bool))
        for contour in roi.get("ContourSequence", []):
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue  # points and open lines enclose nothing
            index = _to_voxels(np.asarray(contour.ContourData, float).reshape(-1, 3), affine)
            k = int(np.rint(index[0, 2]))
            if np.abs(index[:, 2] - k).max() > ON_SLICE or not 0 <= k < shape[2]:
                raise MedsegError(f"{path}: a contour of {name!r} lies off the image's slices "
                                  f"(slice index {index[0, 2]:.2f} of 0..{shape[2] - 1}); the "
                                  "RTSTRUCT belongs to another series")
            corners = index[:, :2]
            if (corners < -0.5).any() or (corners > np.array(shape[:2]) - 0.5).any():
                raise MedsegError(f"{path}: a contour of {name!r} reaches outside the image; "
                                  "the RTSTRUCT belongs to another series, or was drawn on a "
                                  "larger field of view")
            plane = np.zeros(shape[1::-1], dtype=np.uint8)  # rows: axis 1, columns: axis 0
            cv2.fillPoly(plane, [np.rint(corners).astype(np.int32)], 1)
            volume[:, :, k] ^= plane.T.astype(bool)
    return masks


def seg_masks(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> dict[str, np.ndarray]:
    """Every segment of a DICOM-SEG as a mask on the image grid, each frame's pixels placed by
    its ImagePositionPatient, the shared orientation and spacing."""
    import pydicom

    ds = pydicom.dcmread(path)
    names = {s.SegmentNumber: str(s.SegmentLabel) for s in ds.SegmentSequence}
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in
                                   shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    masks = {name: np.zeros(shape, dtype=bool) for name in names.values()}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        position = item.PlanePositionSequence[0].ImagePositionPatient
        identification = (item.get("SegmentIdentificationSequence")
                          or shared.SegmentIdentificationSequence)
        voxels = plane_voxels(position, orientation, (row_spacing, column_spacing), ds.Rows,
                              ds.Columns, inverse, shape)
        if voxels is None:
            raise MedsegError(f"{path}: a frame lies off the image's voxel grid; the DICOM-SEG "
                              "belongs to another series")
        on = frame > 0
        masks[names[identification[0].ReferencedSegmentNumber]][
            tuple(v[on] for v in voxels)] = True
    return {name: mask for name, mask in masks.items() if mask.any()}  # an empty one: no organ
