"""`medseg convert`: RTSTRUCT, DICOM-SEG and per-organ annotations of real scans -> an nnU-Net
v2 raw data set, checked against the masks the annotations were made from."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import convert_inputs, dicom_outputs_of, run_cli_here

from medseg.data.manifest import load_manifest


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def converted(out, case: str, affine, shape) -> np.ndarray:
    """labelsTr/CASE.nii.gz, checked to lie on the scan's grid."""
    image = nib.load(str(out / "labelsTr" / f"{case}.nii.gz"))
    assert image.shape == tuple(shape)
    np.testing.assert_allclose(image.affine, affine, atol=1e-4)
    return np.asarray(image.dataobj)


@pytest.mark.parametrize("kind", ["rtstruct", "dicom-seg"])
def test_a_real_series_annotation_round_trips_into_a_data_set(real_data, real_mask, tmp_path,
                                                              kind):
    """mask -> RTSTRUCT (rt-utils) or DICOM-SEG (highdicom) -> medseg convert -> mask, with a
    label map of medseg's own spelling and ids (matched by name: kidney_right = right_kidney)."""
    mask, affine, labels, _ = real_mask
    series = real_data / "petct_dicom" / "dicom"
    images, annotations = convert_inputs(tmp_path, "petct", series)
    target = {("rtstruct" if kind == "rtstruct" else "seg"): annotations / "petct.dcm"}
    dicom_outputs_of(mask, affine, labels, series, **target)
    ours = {0: "background", 1: "liver", 2: "spleen", 3: "stomach", 4: "aorta",
            5: "right_adrenal_gland", 6: "pancreas"}
    (tmp_path / "map.json").write_text(json.dumps({"labels": ours}))
    out = tmp_path / "Dataset001_PetCT"
    proc = run_cli_here("convert", "--images", images, "--annotations", annotations,
                        "--output", out, "--labels", tmp_path / "map.json")
    assert proc.returncode == 0, proc.stderr
    # Organs the map does not name are listed, not guessed.
    assert "unknown organs: inferior_vena_cava, portal_vein_and_splenic_vein" in proc.stderr
    got = converted(out, "petct", affine, mask.shape)
    theirs = {"liver": 5, "spleen": 1, "stomach": 6, "aorta": 52, "right_adrenal_gland": 8,
              "pancreas": 7}
    scores = {n: dice(got == i, mask == theirs[n]) for i, n in ours.items() if i}
    print(kind, "converted back, Dice per organ:", {k: round(v, 4) for k, v in scores.items()})
    assert min(scores.values()) >= (0.98 if kind == "rtstruct" else 1.0), scores
    assert set(np.unique(got)) <= set(ours)
    cases, read_labels = load_manifest(out / "dataset.json")  # nnU-Net raw, read as it is
    assert len(cases) == 1 and read_labels == ours


def test_per_organ_nrrd_masks_drawn_by_people_convert(real_data, tmp_path):
    """The 3-slice series' NRRD masks (liver, spine, heart), one file per organ."""
    import SimpleITK as sitk

    folder = real_data / "dcmqi_3slice"
    images, annotations = convert_inputs(tmp_path, "ct", folder / "dicom")
    (annotations / "ct").mkdir()
    for organ in ("liver", "spine", "heart"):
        (annotations / "ct" / f"{organ}.nrrd").symlink_to(folder / f"{organ}_seg.nrrd")
    out = tmp_path / "raw"
    proc = run_cli_here("convert", "--images", images, "--annotations", annotations,
                        "--output", out)
    assert proc.returncode == 0, proc.stderr
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "heart": 1, "liver": 2, "spine": 3}
    image = nib.load(str(out / "imagesTr" / "ct_0000.nii.gz"))
    label = converted(out, "ct", image.affine, image.shape)
    # SimpleITK's own reading of the NRRD, placed in the NIfTI grid by world position; where
    # the rough heart overlaps the liver, the later id of the map wins (and convert says so).
    expected = np.zeros(image.shape, np.uint8)
    for organ, organ_id in (("heart", 1), ("liver", 2), ("spine", 3)):
        nrrd = sitk.ReadImage(str(folder / f"{organ}_seg.nrrd"))
        inside = np.argwhere(sitk.GetArrayFromImage(nrrd).transpose(2, 1, 0) > 0)
        lps = np.array([nrrd.TransformContinuousIndexToPhysicalPoint(p.tolist())
                        for p in inside.astype(float)])
        voxels = np.rint(nib.affines.apply_affine(np.linalg.inv(image.affine),
                                                  lps * [-1, -1, 1])).astype(int)
        expected[tuple(voxels.T)] = organ_id
    np.testing.assert_array_equal(label, expected)
    assert "ct: heart and liver overlap in" in proc.stderr


def test_an_annotation_of_another_series_is_one_line(real_data, real_mask, tmp_path):
    """An RTSTRUCT drawn on the 20-slice series, given for the 3-slice one, its series UID
    removed (as de-identification may): its contours' geometry gives it away."""
    import pydicom

    mask, affine, labels, _ = real_mask
    series = real_data / "petct_dicom" / "dicom"
    images, annotations = convert_inputs(tmp_path, "ct", real_data / "dcmqi_3slice" / "dicom")
    rtstruct = dicom_outputs_of(mask, affine, labels, series, rtstruct=annotations / "ct.dcm")
    ds = pydicom.dcmread(rtstruct)
    (ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
     .RTReferencedSeriesSequence[0].SeriesInstanceUID) = ""
    ds.save_as(rtstruct)
    proc = run_cli_here("convert", "--images", images, "--annotations", annotations,
                        "--output", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "lies off the image's slices" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_folder_without_annotations_is_one_line(real_data, tmp_path):
    images, annotations = convert_inputs(tmp_path, "ct", real_data / "dcmqi_3slice" / "dicom")
    (annotations / "notes.txt").write_text("not an annotation")
    proc = run_cli_here("convert", "--images", images, "--annotations", annotations,
                        "--output", tmp_path / "out")
    assert proc.returncode == 2 and "no annotations found; put one RTSTRUCT" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def refusal(images, annotations, out) -> str:
    """`medseg convert`'s one error line (exit code 2, nothing written)."""
    proc = run_cli_here("convert", "--images", images, "--annotations", annotations,
                        "--output", out)
    assert proc.returncode == 2 and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_contour_outside_the_image_is_one_line(real_data, real_mask, tmp_path):
    """The real series' own RTSTRUCT with one liver contour moved 400 mm to the side."""
    import pydicom

    mask, affine, labels, _ = real_mask
    series = real_data / "petct_dicom" / "dicom"
    images, annotations = convert_inputs(tmp_path, "petct", series)
    rtstruct = dicom_outputs_of(mask, affine, labels, series, rtstruct=annotations / "petct.dcm")
    ds = pydicom.dcmread(rtstruct)
    liver = next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == "liver")
    roi = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber == liver)
    points = [float(v) for v in roi.ContourSequence[0].ContourData]
    roi.ContourSequence[0].ContourData = [v + 400.0 if i % 3 == 0 else v
                                          for i, v in enumerate(points)]
    ds.save_as(rtstruct)
    assert refusal(images, annotations, tmp_path / "out") == (
        f"error: {rtstruct}: a contour of 'liver' reaches outside the image; the RTSTRUCT "
        "belongs to another series, or was drawn on a larger field of view")


def test_an_rtstruct_of_a_series_not_in_the_folder_is_one_line(real_data, tmp_path):
    """An RTSTRUCT made on the 3-slice series, then pointed at another series UID: its own
    series is not among the images, even though the geometry would fit."""
    import pydicom

    from medseg.data.io import load_scan

    series = real_data / "dcmqi_3slice" / "dicom"
    scan = load_scan(series)
    mask = np.zeros(scan.shape[1:], np.uint8)
    mask[200:300, 200:300, :] = 1
    images, annotations = convert_inputs(tmp_path, "ct", series)
    rtstruct = dicom_outputs_of(mask, np.asarray(scan.affine), {0: "background", 1: "liver"},
                                series, rtstruct=annotations / "ct.dcm")
    ds = pydicom.dcmread(rtstruct)
    referenced = (ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                  .RTReferencedSeriesSequence[0])
    own = pydicom.dcmread(sorted(series.iterdir())[0]).SeriesInstanceUID
    referenced.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.99"
    ds.save_as(rtstruct)
    assert refusal(images, annotations, tmp_path / "out") == (
        f"error: {rtstruct}: drawn on series 1.2.826.0.1.3680043.2.1125.99, which is not in "
        f"{images} (ct is series {own}); put the series it was drawn on there as ct")


def test_convert_never_replaces_another_data_set_but_redoes_its_own(real_data, tmp_path):
    """An existing data set given as --output keeps its dataset.json (its cases would be left
    unlisted); a folder convert made of the same inputs is converted again."""
    from conftest import convert_3slice

    raw = convert_3slice(real_data, tmp_path)  # the 3-slice series' people-drawn masks
    made = json.loads((raw / "dataset.json").read_text())
    again = run_cli_here("convert", "--images", tmp_path / "images", "--annotations",
                         tmp_path / "annotations", "--output", raw)
    assert again.returncode == 0, again.stderr
    other = tmp_path / "Task09_Spleen"
    other.mkdir()
    decathlon = {"name": "Spleen", "labels": {"0": "background", "1": "spleen"},
                 "training": [{"image": "./imagesTr/s_1.nii.gz", "label": "./labelsTr/s_1.nii.gz"}]}
    (other / "dataset.json").write_text(json.dumps(decathlon))
    for target, what in ((other, "another data set"), (tmp_path / "annotations",
                                                       "annotations")):
        before = (target / "dataset.json").read_text() if target == other else None
        proc = run_cli_here("convert", "--images", tmp_path / "images", "--annotations",
                            tmp_path / "annotations", "--output", target)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert what in proc.stderr
        if before is not None:
            assert (target / "dataset.json").read_text() == before
            assert not (target / "labelsTr").exists()
    assert json.loads((raw / "dataset.json").read_text()) == made


@pytest.mark.parametrize("kind", ["rtstruct", "dicom-seg"])
def test_a_truncated_annotation_is_one_line(real_data, real_mask, tmp_path, kind):
    mask, affine, labels, _ = real_mask
    series = real_data / "petct_dicom" / "dicom"
    images, annotations = convert_inputs(tmp_path, "petct", series)
    target = annotations / "petct.dcm"
    dicom_outputs_of(mask, affine, labels, series,
                     **{("rtstruct" if kind == "rtstruct" else "seg"): target})
    whole = target.read_bytes()
    target.write_bytes(whole[: len(whole) * 2 // 3])
    line = refusal(images, annotations, tmp_path / "out")
    assert line.startswith(f"error: {target}: a damaged "), line
    assert "export the annotation again" in line


def test_probability_maps_in_an_organ_folder_are_refused(real_data, tmp_path):
    """A float 'mask' of probabilities would otherwise become the organ wherever it is > 0."""
    folder = real_data / "dcmqi_3slice"
    images, annotations = convert_inputs(tmp_path, "ct", folder / "dicom")
    (annotations / "ct").mkdir()
    drawn = nib.load(str(_as_nifti(folder / "liver_seg.nrrd", tmp_path)))
    probabilities = np.asarray(drawn.dataobj).astype(np.float32) * 0.8 + 0.1
    nib.save(nib.Nifti1Image(probabilities, drawn.affine), str(annotations / "ct" / "liver.nii.gz"))
    line = refusal(images, annotations, tmp_path / "out")
    assert "liver.nii.gz: holds non-integer values (e.g. 0.1): a probability map" in line


def test_a_ct_slice_where_the_annotation_belongs_says_what_it_is(real_data, tmp_path):
    folder = real_data / "dcmqi_3slice" / "dicom"
    images, annotations = convert_inputs(tmp_path, "ct", folder)
    (annotations / "ct.dcm").symlink_to(folder / "01.dcm")
    line = refusal(images, annotations, tmp_path / "out")
    assert "no annotations found (it holds ct.dcm (a CT image))" in line


def _as_nifti(nrrd: Path, tmp_path: Path) -> Path:
    import SimpleITK as sitk

    target = tmp_path / f"{nrrd.stem}.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(nrrd)), str(target))
    return target
