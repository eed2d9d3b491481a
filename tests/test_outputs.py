"""Outputs a clinic can use: DICOM-SEG and RTSTRUCT read back against the NIfTI mask on the real
DICOM series, organ statistics against numpy, previews' orientation, self-describing masks.

The DICOM files are read back here with pydicom alone, and placed by the DICOM standard's own
pixel-to-patient formula into the NIfTI mask's grid (nibabel's affine); the writers' geometry
code is not used, so a mirrored or shifted output fails.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import dicom_outputs_of, run_cli_here

from medseg.data.io import load_scan
from medseg.data.phantoms import ORGAN_ID, SYNTHETIC_LABELS, make_phantom
from medseg.outputs.dicom import source_slices

# --- reading DICOM back, independently of medseg's writers ----------------------------------

def pixel_centres_lps(position, orientation, spacing, rows, columns) -> np.ndarray:
    """(rows, columns, 3) patient positions of a slice's pixels (DICOM PS3.3 C.7.6.2.1.1)."""
    r, c = np.mgrid[0:rows, 0:columns]
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return (np.asarray(position, float) + c[..., None] * float(spacing[1]) * row_dir
            + r[..., None] * float(spacing[0]) * col_dir)


def to_voxels(lps: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel indices in a NIfTI grid (RAS affine) of LPS points; must be whole numbers."""
    ras = lps * np.array([-1.0, -1.0, 1.0])
    index = nib.affines.apply_affine(np.linalg.inv(affine), ras)
    assert np.abs(index - np.rint(index)).max() < 1e-2, "a pixel off the mask's voxel centres"
    return np.rint(index).astype(int)


def seg_as_volume(path: Path, shape, affine, labels: dict[int, str]) -> np.ndarray:
    """A DICOM-SEG read with pydicom into the NIfTI grid: segments back to label ids by name."""
    seg = pydicom.dcmread(path)
    ids = {name: i for i, name in labels.items()}
    number_to_id = {s.SegmentNumber: ids.get(s.SegmentLabel, 0) for s in seg.SegmentSequence}
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    spacing = shared.PixelMeasuresSequence[0].PixelSpacing
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    volume = np.zeros(shape, dtype=np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        position = item.PlanePositionSequence[0].ImagePositionPatient
        # Per frame, or shared by all frames (a one-segment SEG).
        identification = (item.get("SegmentIdentificationSequence")
                          or shared.SegmentIdentificationSequence)
        number = identification[0].ReferencedSegmentNumber
        voxels = to_voxels(pixel_centres_lps(position, orientation, spacing, seg.Rows,
                                             seg.Columns), affine)
        on = frame > 0
        volume[tuple(voxels[on].T)] = number_to_id[number]
    return volume


def rtstruct_as_masks(path: Path, shape, affine) -> dict[str, np.ndarray]:
    """An RTSTRUCT's ROIs rasterised into the NIfTI grid: each closed planar contour filled
    (OpenCV, boundary pixels included), nested contours as holes (even-odd)."""
    ds = pydicom.dcmread(path)
    names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
    masks = {}
    for roi in ds.ROIContourSequence:
        volume = np.zeros(shape, dtype=bool)
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            index = nib.affines.apply_affine(np.linalg.inv(affine), points * [-1, -1, 1])
            k = int(np.rint(index[0, 2]))
            assert np.abs(index[:, 2] - k).max() < 1e-2  # on a slice of the grid
            plane = np.zeros(shape[1::-1], dtype=np.uint8)  # rows j, columns i
            cv2.fillPoly(plane, [np.rint(index[:, :2]).astype(np.int32)], 1)
            volume[:, :, k] ^= plane.T.astype(bool)
        masks[names[roi.ReferencedROINumber]] = volume
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


# --- DICOM-SEG ------------------------------------------------------------------------------

def test_dicom_seg_holds_the_mask_voxel_for_voxel_on_the_source_slices(real_data, real_mask,
                                                                      tmp_path):
    mask, affine, labels, _ = real_mask
    series = real_data / "petct_dicom" / "dicom"
    target = dicom_outputs_of(mask, affine, labels, series, seg=tmp_path / "petct.seg.dcm")
    np.testing.assert_array_equal(seg_as_volume(target, mask.shape, affine, labels), mask)
    seg = pydicom.dcmread(target)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    positions = {tuple(np.round(np.asarray(s.ImagePositionPatient, float), 3)) for s in sources}
    frame_positions = {tuple(np.round(np.asarray(
        f.PlanePositionSequence[0].ImagePositionPatient, float), 3))
        for f in seg.PerFrameFunctionalGroupsSequence}
    assert frame_positions <= positions and len(frame_positions) == 20  # every slice has organs
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose(np.asarray(orientation.ImageOrientationPatient, float),
                               np.asarray(sources[0].ImageOrientationPatient, float), atol=1e-6)
    # Each frame derives from the source slice at its position, named by the file's own UID.
    by_position = {tuple(np.round(np.asarray(s.ImagePositionPatient, float), 3)):
                   s.file_meta.MediaStorageSOPInstanceUID for s in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = tuple(np.round(np.asarray(
            frame.PlanePositionSequence[0].ImagePositionPatient, float), 3))
        derived = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert derived.ReferencedSOPInstanceUID == by_position[position]
    # One segment per organ present, named as the label map spells it, coded in SNOMED CT.
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert set(segments) == {labels[i] for i in np.unique(mask) if i}
    adrenal = segments["adrenal_gland_right"].SegmentedPropertyTypeCodeSequence[0]
    assert (adrenal.CodeValue, adrenal.CodingSchemeDesignator) == ("23451007", "SCT")
    assert adrenal.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    assert segments["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID


def test_a_mirrored_or_shifted_seg_fails_the_read_back(real_data, real_mask, tmp_path):
    """The check above can fail: a left-right mirrored mask, and frames moved by 5 mm."""
    mask, affine, labels, _ = real_mask
    series = real_data / "petct_dicom" / "dicom"
    mirrored = dicom_outputs_of(np.ascontiguousarray(mask[::-1]), affine, labels, series,
                                seg=tmp_path / "mirrored.seg.dcm")
    assert not np.array_equal(seg_as_volume(mirrored, mask.shape, affine, labels), mask)
    shifted = pydicom.dcmread(dicom_outputs_of(mask, affine, labels, series,
                                               seg=tmp_path / "shifted.seg.dcm"))
    for frame in shifted.PerFrameFunctionalGroupsSequence:
        position = frame.PlanePositionSequence[0]
        position.ImagePositionPatient = [float(position.ImagePositionPatient[0]) + 5 * 0.9765625,
                                         *position.ImagePositionPatient[1:]]
    shifted.save_as(tmp_path / "shifted.seg.dcm")
    moved = seg_as_volume(tmp_path / "shifted.seg.dcm", mask.shape, affine, labels)
    assert dice(moved == 5, mask == 5) < 0.98  # the liver, 5 voxels off


# --- RTSTRUCT -------------------------------------------------------------------------------

def test_rtstruct_contours_rasterise_back_to_the_mask(real_data, real_mask, tmp_path):
    mask, affine, labels, _ = real_mask
    series = real_data / "petct_dicom" / "dicom"
    target = dicom_outputs_of(mask, affine, labels, series,
                              rtstruct=tmp_path / "petct.rtstruct.dcm")
    rois = rtstruct_as_masks(target, mask.shape, affine)
    present = {labels[i]: i for i in np.unique(mask) if i}
    assert set(rois) == set(present)
    scores = {name: dice(rois[name], mask == i) for name, i in present.items()}
    print("RTSTRUCT read back, Dice per organ:", {k: round(v, 4) for k, v in scores.items()})
    assert min(scores.values()) >= 0.98, scores
    ds = pydicom.dcmread(target)
    referenced = ds.ReferencedFrameOfReferenceSequence[0]
    assert referenced.FrameOfReferenceUID == source_slices(series)[0].FrameOfReferenceUID
    images = referenced.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0] \
        .ContourImageSequence
    uids = {p.file_meta.MediaStorageSOPInstanceUID for p in
            (pydicom.dcmread(f, stop_before_pixels=True) for f in series.iterdir())}
    assert {i.ReferencedSOPInstanceUID for i in images} == uids
    # The same read-back fails for contours moved by 3 mm.
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3) + [3.0, 0, 0]
            contour.ContourData = points.ravel().tolist()
    ds.save_as(tmp_path / "moved.dcm")
    moved = rtstruct_as_masks(tmp_path / "moved.dcm", mask.shape, affine)
    assert dice(moved["liver"], mask == 5) < 0.98


# --- the command line -----------------------------------------------------------------------

def test_infer_writes_every_output_for_a_real_series(real_data, tiny_run, tmp_path):
    series = real_data / "dcmqi_3slice" / "dicom"  # 3 slices: the 20-slice one is above
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", tiny_run, "--input", series, "--output", out,
                        "--output-type", "dicom-seg", "--output-type", "rtstruct",
                        "--statistics", "--preview", "--roi-subset", "liver,spleen,stomach",
                        "--min-volume", "5000")  # the tiny model's specks: fewer contours
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {
        "dicom.nii.gz", "dicom.labels.json", "dicom.seg.dcm", "dicom.rtstruct.dcm",
        "dicom.stats.json", "dicom.preview.png", "labels.json", "statistics.csv", "index.html"}
    image = nib.load(str(out / "dicom.nii.gz"))
    mask = np.asarray(image.dataobj)
    labels = {int(k): v for k, v in
              json.loads((out / "dicom.labels.json").read_text())["labels"].items()}
    assert set(labels.values()) == {"background", "liver", "spleen", "stomach"}
    np.testing.assert_array_equal(
        seg_as_volume(out / "dicom.seg.dcm", mask.shape, image.affine, labels), mask)
    rois = rtstruct_as_masks(out / "dicom.rtstruct.dcm", mask.shape, image.affine)
    for name, volume in rois.items():
        truth = mask == {n: i for i, n in labels.items()}[name]
        assert dice(volume, truth) >= 0.98 or truth.sum() < 50, name
    stats = json.loads((out / "dicom.stats.json").read_text())["organs"]
    assert set(stats) == {"liver", "spleen", "stomach"}
    rows = (out / "statistics.csv").read_text().splitlines()
    assert rows[0].startswith("case,organ,volume_ml") and len(rows) == 4
    assert "dicom.preview.png" in (out / "index.html").read_text()
    # A rerun asking for no more than it has skips the case.
    again = run_cli_here("infer", "--model", tiny_run, "--input", series, "--output", out,
                         "--output-type", "dicom-seg", "--roi-subset", "liver,spleen,stomach")
    assert "1 skipped" in again.stdout


def test_a_rerun_redoes_a_case_that_lacks_an_output_asked_for(tiny_run, tiny_dataset, tmp_path):
    scan = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    out = tmp_path / "out"
    assert "1 done" in run_cli_here("infer", "--model", tiny_run, "--input", scan, "--output",
                                    out).stdout
    assert "1 skipped" in run_cli_here("infer", "--model", tiny_run, "--input", scan,
                                       "--output", out).stdout
    again = run_cli_here("infer", "--model", tiny_run, "--input", scan, "--output", out,
                         "--statistics")
    assert "1 done" in again.stdout and (out / "case_000.stats.json").is_file()
    assert (out / "statistics.csv").read_text().startswith("case,organ,volume_ml")


def test_dicom_outputs_for_a_nifti_scan_are_one_line_before_any_work(tiny_run, tiny_dataset,
                                                                     tmp_path):
    scan = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", tiny_run, "--input", scan, "--output", out,
                        "--output-type", "rtstruct")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert f"{scan}: --output-type rtstruct needs a DICOM series input" in proc.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("device, message", [
    ("cuda:1", "--device cuda:1 was asked for, but this torch build sees no CUDA GPU"),
    ("mps", "--device mps was asked for, but this machine has no Apple GPU"),
])
def test_a_device_this_machine_lacks_is_one_line(tiny_run, tiny_dataset, tmp_path, device,
                                                message):
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    scan = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    proc = run_cli_here("infer", "--model", tiny_run, "--input", scan, "--output",
                        tmp_path / "out", "--device", device)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad = run_cli_here("infer", "--model", tiny_run, "--input", scan, "--output",
                       tmp_path / "out", "--device", "gpu1")
    assert bad.returncode == 2 and "cuda:N" in bad.stderr


# --- statistics -----------------------------------------------------------------------------

def test_statistics_agree_with_numpy_on_a_phantom():
    from medseg.outputs.statistics import organ_statistics

    spacing = (2.0, 2.5, 4.0)
    phantom = make_phantom(7, spacing=spacing, orientation="LPS")
    label = phantom.label
    stats = organ_statistics(label, phantom.image, phantom.affine, SYNTHETIC_LABELS)
    for organ, organ_id in ((o, i) for o, i in ORGAN_ID.items() if i):
        inside = label == organ_id
        hu = phantom.image[inside].astype(np.float64)
        got = stats[organ]
        assert got["voxels"] == inside.sum()
        assert got["volume_ml"] == pytest.approx(inside.sum() * 2.0 * 2.5 * 4.0 / 1000)
        assert got["hu_mean"] == pytest.approx(hu.mean(), rel=1e-9)
        assert got["hu_std"] == pytest.approx(hu.std(), rel=1e-9)
        assert got["hu_median"] == pytest.approx(np.median(hu))
        assert got["hu_p5"] == pytest.approx(np.percentile(hu, 5))
        assert got["hu_p95"] == pytest.approx(np.percentile(hu, 95))
        # LPS storage: world x = -(i * 2) + origin, so the lowest RAS x is the highest i.
        ijk = np.argwhere(inside)
        world = phantom.affine[:3, :3] @ ijk.T + phantom.affine[:3, 3:]
        np.testing.assert_allclose(got["bbox_min_ras_mm"], world.min(1), atol=0.01)
        np.testing.assert_allclose(got["bbox_max_ras_mm"], world.max(1), atol=0.01)
        at_edge = (ijk.min(0) == 0).any() or (ijk.max(0) == np.array(label.shape) - 1).any()
        assert got["touches_edge"] is bool(at_edge)
    # The aorta and vena cava run through every slice: cut off at both ends.
    assert set(stats["aorta"]["cut_at"]) == {"inferior", "superior"}
    assert stats["spleen"]["touches_edge"] is False


def test_an_organ_at_the_scan_edge_is_flagged_with_the_side():
    from medseg.outputs.statistics import organ_statistics

    mask = np.zeros((10, 12, 8), dtype=np.uint8)
    mask[3:6, 4:7, 0:3] = 1  # reaches the first slice
    mask[2:4, 0:3, 3:5] = 2  # reaches the first row
    mask[5:7, 5:7, 4:6] = 3  # inside
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # LPS: index 0 of axis 1 is the most anterior
    image = np.zeros(mask.shape, dtype=np.float32)
    stats = organ_statistics(mask, image, affine, {0: "background", 1: "a", 2: "b", 3: "c",
                                                   4: "absent"})
    assert stats["a"]["cut_at"] == ["inferior"] and stats["a"]["touches_edge"]
    assert stats["b"]["cut_at"] == ["anterior"]
    assert stats["c"]["touches_edge"] is False and stats["c"]["volume_ml"] == 8 * 2 / 1000
    assert stats["absent"]["volume_ml"] == 0 and stats["absent"]["hu_mean"] is None


def test_statistics_of_the_real_case_match_its_documented_hu(real_mask):
    """The data's README (an outside oracle): liver about 89 HU, aorta about 177 HU."""
    from medseg.outputs.statistics import organ_statistics

    mask, affine, labels, image = real_mask
    stats = organ_statistics(mask, image, affine, labels)
    assert stats["liver"]["hu_mean"] == pytest.approx(89, abs=2)
    assert stats["aorta"]["hu_mean"] == pytest.approx(177, abs=2)
    # A 20-slice slab cuts the liver at both ends.
    assert {"inferior", "superior"} <= set(stats["liver"]["cut_at"])
    assert stats["liver"]["volume_ml"] == pytest.approx(
        (mask == 5).sum() * 0.9765625 ** 2 * 2.0 / 1000, rel=1e-6)


# --- previews -------------------------------------------------------------------------------

def column_centre(view, organ_id: int) -> float:
    """Where an organ sits across a view, 0 (left edge) to 1 (right edge)."""
    return float(np.argwhere(view.labels == organ_id)[:, 1].mean() / view.labels.shape[1])


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_preview_views_are_radiological_in_any_stored_orientation(orientation):
    from medseg.outputs.preview import preview_views

    phantom = make_phantom(3, spacing=(4, 4, 6), orientation=orientation)
    axial, coronal, sagittal = preview_views(phantom.image, phantom.label, phantom.affine)
    spleen, liver = ORGAN_ID["spleen"], ORGAN_ID["liver"]
    # Left-sided spleen on the viewer's right, liver on the left, in axial and coronal views.
    assert column_centre(axial, spleen) > 0.5 > column_centre(axial, liver)
    assert column_centre(coronal, spleen) > 0.5 > column_centre(coronal, liver)
    # Axial rows run posterior (row 0, drawn at the bottom) to anterior: the stomach lies in
    # front of the kidneys.
    rows = {o: np.argwhere(axial.labels == ORGAN_ID[o])[:, 0].mean()
            for o in ("stomach", "right_kidney") if (axial.labels == ORGAN_ID[o]).any()}
    if len(rows) == 2:
        assert rows["stomach"] > rows["right_kidney"]
    # Proportions in mm whatever the voxels: axial spans x by y, coronal x by z.
    (x, y, z) = (np.abs(phantom.affine[:3, :3]) @ np.array(phantom.label.shape))
    assert axial.extent[1] == pytest.approx(x) and axial.extent[3] == pytest.approx(y)
    assert coronal.extent[3] == pytest.approx(z) and sagittal.extent[1] == pytest.approx(y)


def test_the_real_case_preview_puts_the_spleen_on_the_right(real_mask, tmp_path):
    from medseg.outputs.preview import preview_views, write_index, write_preview

    mask, affine, labels, image = real_mask
    axial = preview_views(image, mask, affine)[0]
    assert column_centre(axial, 1) > 0.5 > column_centre(axial, 5)  # spleen, liver
    target = write_preview(image, mask, affine, labels, tmp_path / "petct.preview.png", "petct")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = write_index(tmp_path, ["petct"]).read_text()
    assert "<img src='petct.preview.png'" in page


# --- self-describing masks and evaluation -----------------------------------------------------

def test_masks_carry_their_label_names(tiny_run, tiny_dataset, tmp_path):
    scan = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    out = tmp_path / "out"
    assert run_cli_here("infer", "--model", tiny_run, "--input", scan, "--output",
                        out).returncode == 0
    mask = out / scan.name
    written = json.loads((out / scan.name.replace(".nii.gz", ".labels.json")).read_text())
    assert written["labels"]["5"] == "liver" and written["labels"]["0"] == "background"
    # The header's CARET label table, parsed as TotalSegmentator's reader does.
    extension = nib.load(str(mask)).header.extensions[0]
    table = ET.fromstring(extension.content).findall(
        "./VolumeInformation/LabelTable/Label")
    assert {int(e.get("Key")): e.text for e in table} == {
        int(k): v for k, v in written["labels"].items() if k != "0"}


def test_evaluate_pairs_self_describing_masks_and_keeps_the_users_names(tmp_path):
    """References spelt the TotalSegmentator way, predictions medseg's way, no --labels: the
    masks' own label tables pair them, and the report keeps the reference's spelling."""
    from medseg.data.io import save_nifti

    refs, preds = tmp_path / "refs", tmp_path / "preds"
    mask = np.zeros((20, 20, 10), dtype=np.uint8)
    mask[2:8, 2:8, 2:6], mask[10:16, 10:16, 3:7] = 1, 2
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    save_nifti(mask, affine, refs / "a.nii.gz", labels={0: "background", 1: "kidney_right",
                                                        2: "Liver"})
    moved = np.where(mask == 1, 3, np.where(mask == 2, 1, 0)).astype(np.uint8)
    save_nifti(moved, affine, preds / "a.nii.gz", labels={0: "background", 1: "liver",
                                                          3: "right_kidney"})
    proc = run_cli_here("evaluate", "--pred", preds, "--ref", refs, "--output", tmp_path / "ev",
                        "--no-figures")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert {k: v["dice_mean"] for k, v in summary["organs"].items()} == {
        "kidney_right": 1.0, "Liver": 1.0}


def test_evaluate_reads_one_file_per_organ_folders(real_mask, tmp_path):
    """TotalSegmentator's default output (case/liver.nii.gz, ...) as predictions and as
    references, against the multi-label mask they were split from."""
    from medseg.data.io import save_nifti

    mask, affine, labels, _ = real_mask
    whole = tmp_path / "whole"
    save_nifti(mask, affine, whole / "petct.nii.gz", labels=labels)
    organs = tmp_path / "organs" / "petct"
    for label_id, name in labels.items():
        if label_id:
            save_nifti((mask == label_id).astype(np.uint8), affine, organs / f"{name}.nii.gz")
    for pred, ref in ((organs.parent, whole), (whole, organs.parent), (organs,
                                                                       whole / "petct.nii.gz")):
        out = tmp_path / f"ev_{pred.name}_{ref.name}"
        proc = run_cli_here("evaluate", "--pred", pred, "--ref", ref, "--output", out,
                            "--no-figures")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((out / "summary.json").read_text())
        present = {labels[i] for i in np.unique(mask) if i}
        dices = {k: v["dice_mean"] for k, v in summary["organs"].items()
                 if v["dice_mean"] is not None}
        assert set(dices) == present and set(dices.values()) == {1.0}, dices


def test_roi_subset_names_are_checked_with_a_suggestion():
    from medseg.data.labels import subset_ids
    from medseg.errors import MedsegError

    labels = {0: "background", 1: "spleen", 2: "kidney_right", 5: "liver"}
    assert subset_ids(["right_kidney", "Liver"], labels, "m") == [2, 5]
    with pytest.raises(MedsegError, match=r"'livr' \(did you mean liver\?\) not among m's organs"):
        subset_ids(["livr"], labels, "m")


# --- refusals -------------------------------------------------------------------------------

def test_rtstruct_refuses_non_square_pixels_and_dicom_seg_takes_them(tmp_path):
    import locale

    import SimpleITK as sitk

    from medseg.errors import MedsegError

    series = tmp_path / "series"
    series.mkdir()
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the locale (conftest)
    try:
        for k in range(3):
            plane = sitk.GetImageFromArray(np.full((6, 5), 40 * k, dtype=np.int16))
            plane.SetSpacing((0.7, 0.9))  # columns 0.7 mm apart, rows 0.9 mm
            for tag, value in {"0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0060": "CT",
                               "0008|0018": f"1.2.3.4.{k + 1}", "0020|000d": "1.2.3.1",
                               "0020|000e": "1.2.3.2", "0020|0052": "1.2.3.3",
                               "0020|0032": f"0\\0\\{2.0 * k}", "0020|0037": "1\\0\\0\\0\\1\\0",
                               "0018|0050": "2"}.items():
                plane.SetMetaData(tag, value)
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(series / f"{k}.dcm"))
            writer.Execute(plane)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    scan = load_scan(series)
    affine = np.asarray(scan.affine, dtype=float)
    mask = np.zeros(scan.shape[1:], dtype=np.uint8)
    mask[1:4, 2:5, 1] = 1  # 3 columns x 3 rows on the middle slice
    labels = {0: "background", 1: "liver"}
    with pytest.raises(MedsegError, match="pixels of 0.9 x 0.7 mm; RTSTRUCT output needs square"):
        dicom_outputs_of(mask, affine, labels, series, rtstruct=tmp_path / "r.dcm")
    seg = dicom_outputs_of(mask, affine, labels, series, seg=tmp_path / "s.dcm")
    np.testing.assert_array_equal(seg_as_volume(seg, mask.shape, affine, labels), mask)


def test_organ_folders_name_a_file_the_map_lacks_or_a_grid_that_differs(tmp_path):
    from medseg.data.io import save_nifti
    from medseg.errors import MedsegError
    from medseg.evaluation.mask_files import load_organ_folder

    folder = tmp_path / "case"
    save_nifti(np.ones((4, 4, 4), np.uint8), np.eye(4), folder / "liver.nii.gz")
    save_nifti(np.ones((4, 4, 4), np.uint8), np.eye(4), folder / "brain.nii.gz")
    with pytest.raises(MedsegError, match="brain.nii.gz: organ 'brain' is not in the label map"):
        load_organ_folder(folder, {0: "background", 1: "liver"})
    save_nifti(np.ones((4, 4, 5), np.uint8), np.eye(4), folder / "brain.nii.gz")
    with pytest.raises(MedsegError, match="liver.nii.gz: not on the grid of brain.nii.gz"):
        load_organ_folder(folder, {0: "background", 1: "liver", 2: "brain"})


def test_masks_whose_label_tables_disagree_need_a_label_map(tmp_path):
    from medseg.data.io import save_nifti

    mask = np.zeros((6, 6, 4), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    save_nifti(mask, np.eye(4), tmp_path / "p" / "a.nii.gz", labels={0: "background", 1: "liver"})
    save_nifti(mask, np.eye(4), tmp_path / "p" / "b.nii.gz", labels={0: "background", 1: "spleen"})
    save_nifti(mask, np.eye(4), tmp_path / "r" / "a.nii.gz", labels={0: "background", 1: "liver"})
    proc = run_cli_here("evaluate", "--pred", tmp_path / "p", "--ref", tmp_path / "r",
                        "--output", tmp_path / "e")
    assert proc.returncode == 2 and "its label 1 is 'spleen', another mask's is 'liver'" in \
        proc.stderr


def test_the_organ_code_table_agrees_with_pydicoms_snomed_dictionary():
    """data_manifests/organ_codes.csv against another source: pydicom's code dictionary."""
    import csv

    from pydicom.sr.codedict import codes

    from medseg.data.labels import canonical_name
    from medseg.data.organ_codes import ANATOMICAL_STRUCTURE, CODES_FILE

    assert ANATOMICAL_STRUCTURE == (codes.SCT.AnatomicalStructure.value,
                                    codes.SCT.AnatomicalStructure.meaning)
    sides = {"Right": codes.SCT.Right.value, "Left": codes.SCT.Left.value}
    with open(CODES_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        assert canonical_name(row["organ"]) == row["organ"]
        if row["pydicom_keyword"]:
            assert getattr(codes.SCT, row["pydicom_keyword"]).value == row["type_code"], row
        if row["modifier_code"]:
            assert sides[row["modifier_meaning"]] == row["modifier_code"]
            assert row["organ"].startswith(row["modifier_meaning"].lower())
    assert sum(bool(r["pydicom_keyword"]) for r in rows) == len(rows) - 1  # all but one checked
    colours = [r["rgb"] for r in rows]
    assert len(set(colours)) == len(colours)  # every organ its own colour


def test_an_imported_nnunet_model_writes_the_same_outputs(real_data, tmp_path):
    """Models trained elsewhere go through the same writers: the nnU-Net test model on the real
    series, its DICOM-SEG read back against its mask, its organs named as its dataset.json."""
    pytest.importorskip("dynamic_network_architectures")
    model = Path(__file__).parent / "data" / "nnunet" / "model"
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", model, "--input", real_data / "dcmqi_3slice" /
                        "dicom", "--output", out, "--output-type", "dicom-seg", "--statistics")
    assert proc.returncode == 0, proc.stderr
    image = nib.load(str(out / "dicom.nii.gz"))
    mask = np.asarray(image.dataobj)
    labels = {int(k): v for k, v in
              json.loads((out / "dicom.labels.json").read_text())["labels"].items()}
    dataset = json.loads((model / "dataset.json").read_text())["labels"]
    assert labels == {i: name for name, i in dataset.items()}
    assert len(np.unique(mask)) > 1
    np.testing.assert_array_equal(
        seg_as_volume(out / "dicom.seg.dcm", mask.shape, image.affine, labels), mask)
    stats = json.loads((out / "dicom.stats.json").read_text())["organs"]
    assert set(stats) == {n for i, n in labels.items() if i}


def test_an_empty_mask_gives_a_seg_with_one_empty_segment(real_data, real_mask, tmp_path,
                                                          warnings_seen):
    mask, affine, labels, _ = real_mask
    series = real_data / "petct_dicom" / "dicom"
    empty = np.zeros_like(mask)
    target = dicom_outputs_of(empty, affine, labels, series, seg=tmp_path / "empty.seg.dcm")
    seg = pydicom.dcmread(target)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["no organ found"]
    assert not seg_as_volume(target, mask.shape, affine, labels).any()
    assert any("empty.seg.dcm: the mask holds no organ" in w for w in warnings_seen)
    # Read back, it is no organ: convert neither names it nor paints it.
    from medseg.data.annotations import annotation_names, seg_masks

    assert annotation_names(target) == []
    assert seg_masks(target, mask.shape, affine) == {}
