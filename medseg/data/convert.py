"""`medseg convert`: scans and their annotations as hospitals and other tools keep them (an
RTSTRUCT or DICOM-SEG per series, or a folder of one mask per organ) -> an nnU-Net v2 raw data
set (imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, dataset.json), which medseg and nnU-Net
both train on. Annotations are put on each scan's own voxel grid; organs are named as the label
map names them (matched by canonical name) and organs it lacks are listed, not guessed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medseg.data.annotations import (
    annotation_names,
    dicom_modality,
    organ_files,
    organ_folder_masks,
    referenced_series,
    rtstruct_masks,
    seg_masks,
    series_uid,
)
from medseg.data.files import case_name, check_apart, read_json, write_json
from medseg.data.io import list_scans, load_scan, save_nifti
from medseg.data.labels import canonical_name
from medseg.data.scan_checks import check_same_grid, onto_axes_of
from medseg.errors import MedsegError, first_line

log = logging.getLogger("medseg")
KINDS = {"RTSTRUCT": rtstruct_masks, "SEG": seg_masks}


def find_annotations(folder: Path) -> dict[str, Path]:
    """{case: annotation} in a folder: CASE/ holding one mask file per organ (NIfTI, NRRD,
    MHA: ORGAN.nii.gz, ...), or a DICOM file whose
    name starts with the case name (CASE.dcm, CASE.rtstruct.dcm, ...) that is an RTSTRUCT or a
    DICOM-SEG."""
    found: dict[str, Path] = {}
    others: list[str] = []  # DICOM files of other kinds: images where annotations belong
    for entry in sorted(Path(folder).iterdir()):
        if entry.name.startswith("."):
            continue
        modality = dicom_modality(entry) if entry.is_file() else None
        if entry.is_dir() and organ_files(entry):
            found[entry.name] = entry
        elif modality in KINDS:
            found[entry.name.split(".")[0]] = entry
        elif modality is not None:
            others.append(f"{entry.name} (a {modality} image)")
    if not found:
        seen = f" (it holds {', '.join(others[:3])})" if others else ""
        raise MedsegError(f"{folder}: no annotations found{seen}; put one RTSTRUCT or DICOM-SEG "
                          "file per case (CASE.dcm) or one folder of organ masks per case (CASE/) "
                          "in it")
    for other in others:
        log.warning("%s: %s, not an annotation (RTSTRUCT or DICOM-SEG); left out", folder, other)
    return found


def organ_masks(annotation: Path, shape, affine) -> Iterator[tuple[str, np.ndarray]]:
    """(organ name, mask on the image grid) from an RTSTRUCT, a DICOM-SEG or an organ folder
    (its files one at a time, checked against the image's grid and put on its axes)."""
    if annotation.is_file():
        yield from read_dicom_annotation(annotation, KINDS[dicom_modality(annotation)], shape,
                                         affine).items()
        return
    for path, mask, grid in organ_folder_masks(annotation):
        check_same_grid(shape, affine, mask.shape, grid, annotation, path)
        yield case_name(path), onto_axes_of(mask, grid, affine)


def read_dicom_annotation(path: Path, read, *args):
    """read(path, *args) for an RTSTRUCT or DICOM-SEG, a damaged file (truncated, a sequence
    or the pixel data missing) one line naming it."""
    try:
        return read(path, *args)
    except MedsegError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom and highdicom raise many kinds
        raise MedsegError(f"{path}: a damaged {dicom_modality(path)} ({first_line(exc)}); "
                          "export the annotation again") from None


def check_drawn_on(annotation: Path, scan: Path) -> None:
    """An RTSTRUCT or DICOM-SEG must reference the series it is paired with, where both carry
    series UIDs (de-identified series may not); geometry is checked as the masks are placed."""
    if not annotation.is_file():
        return
    drawn_on, uid = read_dicom_annotation(annotation, referenced_series), series_uid(scan)
    if drawn_on and uid and uid not in drawn_on:
        raise MedsegError(f"{annotation}: drawn on series {', '.join(sorted(drawn_on))}, which is "
                          f"not in {scan.parent} ({scan.name} is series {uid}); put the series "
                          f"it was drawn on there as {annotation.name.split('.')[0]}")


# dataset.json records what it was converted from (nnU-Net ignores keys it does not know), so
# that a rerun may update its own data set and nothing else.
MADE_OF = "medseg_convert"


def check_convert_output(output: Path, made_of: dict) -> None:
    """Refuse a non-empty output folder that is not what convert made of these very inputs:
    another data set's dataset.json would be replaced, its cases left unlisted."""
    if not output.is_dir() or not any(output.iterdir()):
        return
    dataset = output / "dataset.json"
    recorded = read_json(dataset).get(MADE_OF) if dataset.is_file() else None
    if recorded == made_of:
        return
    what = ("a data set medseg convert made of other inputs" if recorded else
            "another data set (its dataset.json would be replaced)" if dataset.is_file() else
            "a folder of other files")
    raise MedsegError(f"{output}: not empty, and {what}; give a new or empty --output folder")


def convert_dataset(images: Path, annotations: Path, output: Path,
                    labels: dict[int, str] | None = None) -> dict:
    """Write the nnU-Net v2 raw data set; returns what was converted and what was left out."""
    images, annotations, output = Path(images), Path(annotations), Path(output)
    check_apart(images, output, "images")
    check_apart(annotations, output, "annotations")
    made_of = {"images": str(images.resolve()), "annotations": str(annotations.resolve())}
    check_convert_output(output, made_of)
    scans = {case_name(p): p for p in list_scans(images)}
    found = find_annotations(annotations)
    cases = sorted(set(scans) & set(found))
    if not cases:
        raise MedsegError(f"no case names in common between {images} and {annotations}")
    # The default ids need every organ's name: read from the annotations' headers alone, so
    # that one case at a time is held in memory below.
    names = sorted({n for case in cases
                    for n in read_dicom_annotation(found[case], annotation_names)})
    labels = labels or {0: "background", **dict(enumerate(names, start=1))}
    ids = {canonical_name(n): i for i, n in labels.items() if i}
    unknown = sorted({n for n in names if canonical_name(n) not in ids})
    if unknown:
        log.warning("organs the label map does not name, left out: %s", ", ".join(unknown))
    for case in cases:
        check_drawn_on(found[case], scans[case])
        scan = load_scan(scans[case])
        affine = np.asarray(scan.meta.get("original_affine", scan.affine), dtype=float)
        label = np.zeros(scan.shape[1:], dtype=np.uint8)
        for name, mask in organ_masks(found[case], tuple(scan.shape[1:]), affine):
            if canonical_name(name) not in ids:
                continue
            label_id = ids[canonical_name(name)]
            taken = label[mask]
            for other in np.unique(taken[taken > 0]):
                keeper = labels[max(int(other), label_id)]
                log.warning("%s: %s and %s overlap in %d voxels; %s (the later id) keeps them",
                            case, labels[int(other)], name, int((taken == other).sum()), keeper)
            np.maximum(label, mask.astype(np.uint8) * np.uint8(label_id), out=label)
        image = scan[0].numpy()
        if np.array_equal(image, np.round(image)) and image.min() >= -32768 \
                and image.max() <= 32767:
            image = image.astype(np.int16)  # HU are whole numbers: half the size
        save_nifti(image, affine, output / "imagesTr" / f"{case}_0000.nii.gz")
        save_nifti(label, affine, output / "labelsTr" / f"{case}.nii.gz", labels=labels)
    write_json({"channel_names": {"0": "CT"},
                "labels": {name: i for i, name in sorted(labels.items())},
                "numTraining": len(cases), "file_ending": ".nii.gz", MADE_OF: made_of},
               output / "dataset.json")
    return {"cases": cases, "labels": labels, "unknown_organs": unknown,
            "images_without_annotation": sorted(set(scans) - set(found)),
            "annotations_without_image": sorted(set(found) - set(scans))}
