"""DICOM outputs of a mask: a DICOM-SEG (highdicom) and an RTSTRUCT (rt-utils), both referencing
the source series. Frames and contours are placed on the source slices by geometry: every pixel
of every slice is mapped through its ImagePositionPatient, ImageOrientationPatient and
PixelSpacing into the mask's voxel grid, so no assumption about axis order or flips is made (the
mirrored-SEG bugs TotalSegmentator's users reported came from such assumptions)."""

from __future__ import annotations

import logging
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np

from medseg.data.annotations import EMPTY_SEGMENT_LABEL, plane_voxels
from medseg.data.files import atomic_output
from medseg.data.organ_codes import ANATOMICAL_STRUCTURE, organ_code
from medseg.errors import MedsegError

log = logging.getLogger("medseg")

DICOM_TYPES = ("dicom-seg", "rtstruct")
SUFFIXES = {"dicom-seg": ".seg.dcm", "rtstruct": ".rtstruct.dcm"}


def source_slices(series: Path) -> list:
    """The source series' slice datasets (without pixel data), as the scan was read, in
    ascending order along the slice normal (the order rt-utils indexes slices in)."""
    import pydicom

    from medseg.data.sitk_reader import dicom_series_files

    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(series)]
    complete_uids(slices, series)
    for ds in slices:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty (seen from a GE scanner): the default repertoire
    slices = sorted(slices, key=_along_normal)
    if any(ds.get("SliceThickness") in (None, "") for ds in slices):
        # A type 2 attribute some exports leave out; DICOM-SEG's pixel measures need it.
        step = abs(_along_normal(slices[1]) - _along_normal(slices[0])) if len(slices) > 1 else 1
        for ds in slices:
            ds.SliceThickness = ds.get("SliceThickness") or round(step, 6)
    return slices


def _along_normal(dataset) -> float:
    orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
    return float(np.cross(orientation[:3], orientation[3:]) @
                 np.asarray(dataset.ImagePositionPatient, dtype=float))


def complete_uids(slices: list, series: Path) -> None:
    """Fill identifiers de-identification emptied, in memory: each slice's SOP class and
    instance UIDs from its own file meta, and a missing study or series UID with one derived
    from the frame of reference (the same in every output of the series; with a warning)."""
    from pydicom.uid import generate_uid

    for dataset in slices:
        meta = getattr(dataset, "file_meta", None)
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not dataset.get(key) and meta is not None and meta.get(meta_key):
                setattr(dataset, key, meta.get(meta_key))
        if not dataset.get("SOPInstanceUID"):
            raise MedsegError(f"{series}: a slice has no SOPInstanceUID, so a DICOM output cannot "
                              "reference it; export the series with its UIDs")
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not slices[0].get(key):
            made = generate_uid(entropy_srcs=[key, str(slices[0].get("FrameOfReferenceUID")),
                                              *sorted(str(d.SOPInstanceUID) for d in slices)])
            log.warning("%s: the series has no %s (de-identified?); the DICOM outputs reference "
                        "%s instead", series, key, made)
            for dataset in slices:
                setattr(dataset, key, made)


def frames_on_slices(mask: np.ndarray, affine: np.ndarray, slices: list,
                     series: Path) -> np.ndarray:
    """The mask as (slices, rows, columns) frames, frame n lying on source slice n."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    frames = []
    for ds in slices:
        voxels = plane_voxels(ds.ImagePositionPatient, ds.ImageOrientationPatient,
                              ds.PixelSpacing, int(ds.Rows), int(ds.Columns), inverse,
                              mask.shape)
        if voxels is None:
            raise MedsegError(f"{series}: slice {ds.SOPInstanceUID} does not lie on the mask's "
                              "grid; the mask was not made from this series")
        frames.append(mask[voxels])
    return np.stack(frames)


def check_dicom_input(output_types, scan_path: Path) -> None:
    """DICOM outputs reference a DICOM series: any other input is refused in one line."""
    wanted = [t for t in output_types if t in DICOM_TYPES]
    if wanted and not Path(scan_path).is_dir():
        raise MedsegError(f"{scan_path}: --output-type {', '.join(wanted)} needs a DICOM series "
                          "input (a folder of slices) to reference; for NIfTI, NRRD or MHA scans "
                          "use --output-type nifti")


def _segment_description(number: int, name: str, label_id: int, algorithm):
    import highdicom as hd

    code = organ_code(name, label_id)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept(*ANATOMICAL_STRUCTURE[:1], "SCT",
                                                       ANATOMICAL_STRUCTURE[1]),
        segmented_property_type=hd.sr.CodedConcept(code.type_code, "SCT", code.type_meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*code.rgb))
    if code.modifier is not None:  # laterality: inside the type's code item, as DICOM has it
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence \
            = [hd.sr.CodedConcept(code.modifier[0], "SCT", code.modifier[1])]
    return description


def present_labels(frames: np.ndarray, labels: dict[int, str]) -> list[int]:
    """The ids of `labels` (background left out) that the frames hold, in one pass."""
    counts = np.bincount(frames.ravel(), minlength=max(labels) + 1)
    return [i for i in sorted(labels) if i and counts[i]]


def write_dicom_seg(frames: np.ndarray, labels: dict[int, str], slices: list, target: Path,
                    model_id: str) -> Path:
    """A binary DICOM-SEG, one segment per organ of `labels` the frames hold (named as the label
    map names it, coded in SNOMED CT): frames_on_slices of the mask and source_slices of the
    series; written atomically."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    present = present_labels(frames, labels)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg", version=version("medseg"), family=codes.DCM.ArtificialIntelligence,
        parameters={"model": model_id})
    numbered = np.zeros(max(labels) + 1, dtype=np.uint8)
    numbered[present] = np.arange(1, len(present) + 1)
    descriptions = [_segment_description(n, labels[i], i, algorithm)
                    for n, i in enumerate(present, start=1)]
    if not descriptions:  # DICOM-SEG needs a segment: an empty mask gets one empty segment
        log.warning("%s: the mask holds no organ (none found, or all removed by --min-volume / "
                    "--keep-largest); the DICOM-SEG holds one empty segment, %r", target.name,
                    EMPTY_SEGMENT_LABEL)
        descriptions = [_segment_description(1, EMPTY_SEGMENT_LABEL, 0, algorithm)]
    with warnings.catch_warnings():  # on the source's patient name, copied as it is
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person")
        seg = _segmentation(hd, slices, numbered[frames], descriptions, model_id, bool(present))
    with atomic_output(target) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return target


def _segmentation(hd, slices, pixels, descriptions, model_id: str, omit_empty: bool):
    return hd.seg.Segmentation(
        source_images=slices, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg",
        manufacturer_model_name=model_id[:64], software_versions=version("medseg"),
        device_serial_number="0", series_description="medseg segmentation",
        omit_empty_frames=omit_empty)


def write_rtstruct(frames: np.ndarray, labels: dict[int, str], series: Path, slices: list,
                   target: Path) -> Path:
    """An RTSTRUCT with one ROI per organ the frames hold (closed planar contours on each source
    slice, named as the label map names them), referencing the series: frames_on_slices of the
    mask and source_slices of the series; written atomically."""
    from rt_utils import RTStruct, ds_helper

    rtstruct = RTStruct(slices, ds_helper.create_rtstruct_dataset(slices))
    first = slices[0]
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    if row_spacing != column_spacing:
        raise MedsegError(f"{series}: pixels of {row_spacing:g} x {column_spacing:g} mm; "
                          "RTSTRUCT output needs square pixels (rt-utils places contours as if "
                          "they were); use --output-type dicom-seg")
    for label_id in present_labels(frames, labels):
        organ = np.moveaxis(frames == label_id, 0, -1)  # rt-utils: rows x columns x slices
        rtstruct.add_roi(mask=organ, name=labels[label_id],
                         color=list(organ_code(labels[label_id], label_id).rgb))
    with atomic_output(target) as tmp:
        rtstruct.ds.save_as(tmp, enforce_file_format=True)
    return target
