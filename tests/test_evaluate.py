"""Evaluation numbers against hand-computed answers, and the empty-organ policy."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from conftest import write_nifti

from medseg.errors import MedsegError
from medseg.evaluate import confusion_counts, dice_from_counts, evaluate_folders

LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "pancreas"}


def test_dice_of_overlapping_cubes_matches_hand_count():
    ref = np.zeros((20, 20, 20), np.int64)
    pred = np.zeros_like(ref)
    ref[0:10, 0:10, 0:10] = 1  # 1000 voxels
    pred[5:15, 0:10, 0:10] = 1  # 1000 voxels, 500 shared
    ref[12:16, 12:16, 12:16] = 2  # 64 voxels
    pred[12:16, 12:16, 12:14] = 2  # 32 voxels, all inside
    dice = dice_from_counts(confusion_counts(pred, ref, 4))
    assert dice[1] == pytest.approx(2 * 500 / 2000)
    assert dice[2] == pytest.approx(2 * 32 / 96)
    assert math.isnan(dice[3])  # absent on both sides


def test_one_sided_absence_scores_zero():
    ref = np.zeros((5, 5, 5), np.int64)
    pred = ref.copy()
    pred[1, 1, 1] = 3
    assert dice_from_counts(confusion_counts(pred, ref, 4))[3] == 0.0


def _case(folder, name, array, affine=None):
    folder.mkdir(exist_ok=True)
    write_nifti(folder / f"{name}.nii.gz", array.astype(np.uint8), affine)


def test_folder_evaluation_writes_csv_summary_and_report(tmp_path):
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
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "eval", LABELS)
    liver_a = 2 * 400 / (500 + 400)
    assert summary["organs"]["liver"]["dice_mean"] == pytest.approx((liver_a + 1.0) / 2)
    assert summary["organs"]["liver"]["n"] == 2
    assert summary["organs"]["spleen"]["n"] == 1  # case a has no spleen anywhere: NaN, left out
    assert summary["organs"]["pancreas"]["dice_mean"] is None
    assert summary["missing_predictions"] == ["c"]
    assert summary["mean_dice"] == pytest.approx(np.mean([(liver_a + 1) / 2, 1.0]))
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk["organs"] == summary["organs"]
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_case.csv")))
    assert len(rows) == 2 * 3 and {r["case"] for r in rows} == {"a", "b"}
    assert "| liver |" in (tmp_path / "eval" / "report.md").read_text()


def test_geometry_mismatch_and_foreign_labels_name_the_case(tmp_path):
    _case(tmp_path / "ref", "a", np.zeros((6, 6, 6)))
    _case(tmp_path / "pred", "a", np.zeros((6, 6, 5)))
    with pytest.raises(MedsegError, match="a: prediction shape"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", LABELS)
    _case(tmp_path / "pred", "a", np.zeros((6, 6, 6)), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(MedsegError, match="affines differ"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", LABELS)
    _case(tmp_path / "pred", "a", np.full((6, 6, 6), 9))
    with pytest.raises(MedsegError, match=r"label values \[9\] are not in the label map"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "e", LABELS)
    assert not (tmp_path / "e" / "summary.json").exists()
