"""Folder evaluation: summaries and files, geometry checks and resampling, name-based remapping,
parallel workers, and the reports."""

from __future__ import annotations

import csv
import json
import math
import re

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_nifti

from cli import main
from medseg.errors import MedsegError
from medseg.evaluation.evaluate import evaluate_folders, resample_nearest

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "pancreas"}


def _case(folder, name, array, affine=None):
    folder.mkdir(exist_ok=True)
    write_nifti(folder / f"{name}.nii.gz", np.asarray(array).astype(np.uint8), affine)


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_evaluation_writes_csv_summary_and_report(tmp_path, warnings_seen):
    ref_a = np.zeros((10, 10, 10))
    ref_a[:5] = 1
    pred_a = np.zeros_like(ref_a)
    pred_a[:4] = 1
    ref_b = np.zeros_like(ref_a)
    ref_b[:, :5] = 2
    ref_b[8:, 8:, 8:] = 1
    _case(tmp_path / "ref", "a", ref_a)
    _case(tmp_path / "ref", "b", ref_b)
    _case(tmp_path / "ref", "c", ref_b)
    _case(tmp_path / "pred", "a", pred_a)
    _case(tmp_path / "pred", "b", ref_b)
    _case(tmp_path / "pred", "d", ref_b)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "eval", LABELS,
                               workers=1, figures=False)
    liver_a = 2 * 400 / (500 + 400)
    assert summary["organs"]["liver"]["dice_mean"] == pytest.approx((liver_a + 1.0) / 2)
    assert summary["organs"]["liver"]["iou_mean"] == pytest.approx((400 / 500 + 1.0) / 2)
    assert summary["organs"]["liver"]["n"] == 2
    assert summary["organs"]["liver"]["ref_volume_ml_mean"] == pytest.approx((500 + 8) / 2e3)
    assert summary["organs"]["spleen"]["n"] == 1  # case a has no spleen anywhere: NaN, left out
    assert summary["organs"]["pancreas"]["dice_mean"] is None
    assert summary["missing_predictions"] == ["c"]
    assert any("1 reference case(s) have no prediction" in w and w.endswith(": c")
               for w in warnings_seen)  # said, not only recorded
    assert summary["predictions_without_reference"] == ["d"]
    assert summary["mean_dice"] == pytest.approx(np.mean([(liver_a + 1) / 2, 1.0]))
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk["organs"] == summary["organs"]
    rows = _rows(tmp_path / "eval" / "per_case.csv")
    assert len(rows) == 2 * 3 and {r["case"] for r in rows} == {"a", "b"}
    spleen_a = next(r for r in rows if r["case"] == "a" and r["organ"] == "spleen")
    assert spleen_a["status"] == "both_empty" and math.isnan(float(spleen_a["dice"]))
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| liver |" in report and "References without a prediction: c" in report
    assert "Predictions without a reference: d" in report


def test_one_sided_organs_are_counted_and_keep_hd95_out_of_the_mean(tmp_path):
    ref = np.zeros((12, 12, 12))
    ref[2:6, 2:6, 2:6] = 1
    pred = ref.copy()
    pred[1:6, 2:6, 2:6] = 1  # one slab more: HD95 1 mm
    _case(tmp_path / "ref", "hit", ref)
    _case(tmp_path / "pred", "hit", pred)
    _case(tmp_path / "ref", "miss", ref)
    _case(tmp_path / "pred", "miss", np.zeros_like(ref))
    _case(tmp_path / "ref", "extra", np.zeros_like(ref))
    _case(tmp_path / "pred", "extra", ref)
    liver = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "eval", LABELS,
                             workers=1, figures=False)["organs"]["liver"]
    assert (liver["missed"], liver["spurious"]) == (1, 1)
    assert liver["dice_n"] == 3 and liver["dice_mean"] == pytest.approx((2 * 64 / 144) / 3)
    assert liver["nsd_n"] == 3 and liver["hd95_mm_n"] == 1
    assert liver["hd95_mm_mean"] == pytest.approx(1.0)


def test_geometry_mismatch_and_foreign_labels_name_the_case(tmp_path):
    _case(tmp_path / "ref", "a", np.zeros((6, 6, 6)))
    _case(tmp_path / "pred", "a", np.zeros((6, 6, 5)))
    with pytest.raises(MedsegError, match="a: prediction shape .* pass --resample-pred"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", LABELS)
    _case(tmp_path / "pred", "a", np.zeros((6, 6, 6)), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(MedsegError, match=r"affines differ \(spacing 2x1x1 mm vs 1x1x1 mm\)"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", LABELS)
    _case(tmp_path / "pred", "a", np.full((6, 6, 6), 9))
    with pytest.raises(MedsegError, match=r"label values \[9\] are not in the label map"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", LABELS)
    _case(tmp_path / "pred", "a", np.full((6, 6, 6), 2))
    with pytest.raises(MedsegError, match=r"label values \[2\] .* \(ids 0..1, 3\)"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e",
                         {0: "background", 1: "liver", 3: "pancreas"})  # a map with a gap
    assert not (tmp_path / "e" / "summary.json").exists()


def flipped_grid(array: np.ndarray, affine: np.ndarray, axis: int):
    """The same voxels stored with one axis reversed, and the affine that keeps them in place."""
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1, array.shape[axis] - 1
    return np.flip(array, axis).copy(), affine @ flip


def test_resample_pred_puts_a_flipped_row_order_grid_back(tmp_path):
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-20, 14, 30]
    ref = np.zeros((12, 10, 6))
    ref[1:5, 0:4, 1:4] = 1  # touches row 0, which the flip moves to the far edge
    ref[6:11, 5:10, 2:6] = 2
    pred, pred_affine = flipped_grid(ref, affine, axis=1)
    _case(tmp_path / "ref", "a", ref, affine)
    _case(tmp_path / "pred", "a", pred, pred_affine)
    with pytest.raises(MedsegError, match="orientation RPS vs RAS"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", LABELS)
    organs = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", LABELS,
                              resample=True, figures=False)["organs"]
    for organ in ("liver", "spleen"):
        assert organs[organ]["dice_mean"] == 1.0 and organs[organ]["hd95_mm_mean"] == 0.0


def test_nearest_resampling_onto_a_finer_grid_repeats_voxels():
    coarse = np.arange(2 * 3 * 2, dtype=np.uint8).reshape(2, 3, 2) + 1
    coarse_affine = np.diag([3.0, 3.0, 3.0, 1.0])
    coarse_affine[:3, 3] = 1.0  # coarse centres at 1, 4, 7 mm: fine centres 0..8 are all nearer
    fine = resample_nearest(coarse, coarse_affine, (7, 9, 6), np.eye(4))
    expected = np.zeros((7, 9, 6), np.uint8)
    expected[:6, :9, :6] = coarse.repeat(3, 0).repeat(3, 1).repeat(3, 2)
    np.testing.assert_array_equal(fine, expected)  # row 6 lies outside the coarse grid: 0


def test_parallel_workers_give_the_same_numbers(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c"):
        ref = (rng.random((14, 12, 8)) < 0.4) * rng.integers(1, 4, (14, 12, 8))
        _case(tmp_path / "ref", name, ref)
        _case(tmp_path / "pred", name, np.roll(ref, 1, axis=0))
    for workers in (1, 2):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / f"w{workers}", LABELS,
                         workers=workers, figures=False)
    assert (tmp_path / "w1" / "per_case.csv").read_text() == \
        (tmp_path / "w2" / "per_case.csv").read_text()


def test_html_report_references_images_that_exist(tmp_path):
    ref = np.zeros((16, 14, 10))
    ref[2:8, 2:8, 2:6] = 1
    ref[9:14, 8:12, 4:9] = 2
    for name, shift in (("good", 0), ("fair", 1), ("poor", 3)):
        _case(tmp_path / "ref", name, ref)
        _case(tmp_path / "pred", name, np.roll(ref, shift, axis=0))
    _case(tmp_path / "ref", "unmatched", ref)
    result = CliRunner().invoke(main, ["evaluate", "--pred", str(tmp_path / "pred"), "--ref",
                                       str(tmp_path / "ref"), "--output", str(tmp_path / "eval"),
                                       "--labels", json_labels(tmp_path), "--workers", "1"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "eval" / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) == 5 + 2  # a box plot per metric, overlays of the best and worst case
    for image in images:
        assert (tmp_path / "eval" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best: good" in page and "worst: poor" in page and "unmatched" in page
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert set(re.findall(r"\]\((figures/[^)]+)\)", markdown)) == set(images)


def json_labels(tmp_path) -> str:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"labels": {str(k): v for k, v in LABELS.items()}}))
    return str(path)


# Hand-written from the two public maps: organ -> (TotalSegmentator v2 id, BTCV id), for the
# organs in the real mask.
TOTALSEG_AND_BTCV_IDS = {"spleen": (1, 1), "liver": (5, 6), "stomach": (6, 7), "pancreas": (7, 11),
                         "right_adrenal_gland": (8, 12), "aorta": (52, 8),
                         "inferior_vena_cava": (63, 9), "portal_and_splenic_veins": (64, 10)}


def test_totalsegmentator_reference_against_btcv_prediction_by_name(real_data, tmp_path):
    source = real_data / "petct_dicom" / "reference_seg_totalsegmentator_v2fast.nii.gz"
    image = nib.load(str(source))
    totalseg = np.asarray(image.dataobj)
    pred = np.zeros_like(totalseg)
    for organ, (ts_id, btcv_id) in TOTALSEG_AND_BTCV_IDS.items():
        if organ != "pancreas":  # left out: a missed organ
            pred[totalseg == ts_id] = btcv_id
    assert not totalseg[10:20, 10:20, :3].any()
    pred[10:20, 10:20, :3] = 4  # a gallbladder where the reference has none: spurious
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "pet.nii.gz").write_bytes(source.read_bytes())
    _case(tmp_path / "pred", "pet", pred, image.affine)
    result = CliRunner().invoke(main, [
        "evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
        "--output", str(tmp_path / "eval"), "--ref-labels", "totalseg_v2",
        "--pred-labels", "btcv", "--no-figures"])
    assert result.exit_code == 0, result.output
    rows = {r["organ"]: r for r in _rows(tmp_path / "eval" / "per_case.csv")}
    assert len(rows) == 13
    for organ, (ts_id, _) in TOTALSEG_AND_BTCV_IDS.items():
        assert int(rows[organ]["ref_voxels"]) == np.count_nonzero(totalseg == ts_id)  # all kept
        assert float(rows[organ]["dice"]) == (0.0 if organ == "pancreas" else 1.0)
    assert rows["pancreas"]["status"] == "pred_empty"
    assert rows["gallbladder"]["status"] == "ref_empty"
    assert rows["left_kidney"]["status"] == "both_empty"
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    only_ref = summary["organs_only_in_reference"]
    assert only_ref["colon"] == 1 and only_ref["duodenum"] == 0 and summary[
        "organs_only_in_prediction"] == {}
    assert "colon (1 case)" in (tmp_path / "eval" / "report.md").read_text()


def test_real_mask_written_on_the_dicom_grid_needs_resample_pred(real_data, tmp_path):
    from medseg.data.io import load_scan

    source = real_data / "petct_dicom" / "reference_seg_totalsegmentator_v2fast.nii.gz"
    image = nib.load(str(source))
    dicom = load_scan(real_data / "petct_dicom" / "dicom")
    dicom_affine = np.asarray(dicom.affine, float)
    # Same voxel grid in the world, but the DICOM rows run the other way.
    index_map = np.round(np.linalg.inv(image.affine) @ dicom_affine)
    np.testing.assert_array_equal(index_map[:3, :3], np.diag([1, -1, 1]))
    pred = np.flip(np.asarray(image.dataobj), 1).copy()
    _case(tmp_path / "pred", "pet", pred, dicom_affine)
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "pet.nii.gz").write_bytes(source.read_bytes())
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
            "--output", str(tmp_path / "eval"), "--labels", "totalseg_v2", "--no-figures"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "pet: prediction and reference affines differ" in \
        refused.output and "--resample-pred" in refused.output
    result = CliRunner().invoke(main, [*args, "--resample-pred"])
    assert result.exit_code == 0, result.output
    rows = [r for r in _rows(tmp_path / "eval" / "per_case.csv") if r["status"] != "both_empty"]
    assert len(rows) == 31 and all(float(r["dice"]) == 1.0 for r in rows)
