"""Real de-identified CT from ../shared/data flowing through infer and evaluate (skips without)."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
from click.testing import CliRunner

from cli import main


def corner_centres(image: nib.Nifti1Image) -> np.ndarray:
    """World positions of the 8 corner voxel centres, sorted so grids compare as sets."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in image.shape[:3]])))
    world = nib.affines.apply_affine(image.affine, corners)
    return world[np.lexsort(world.T)]


def test_dicom_series_folder_gives_a_mask_on_the_reference_grid(real_data, tiny_run, tmp_path):
    series = real_data / "petct_dicom" / "dicom"
    result = CliRunner().invoke(main, ["infer", "--model", str(tiny_run), "--input", str(series),
                                       "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    mask = nib.load(str(tmp_path / "dicom.nii.gz"))  # folder X/ -> X.nii.gz
    reference = nib.load(str(real_data / "petct_dicom" /
                             "reference_seg_totalsegmentator_v2fast.nii.gz"))
    assert mask.shape == reference.shape == (512, 512, 20)
    # Same voxel grid in the world, whatever order each file stores its rows in.
    np.testing.assert_allclose(corner_centres(mask), corner_centres(reference), atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(mask.affine[:3, :3], axis=0),
                               [0.977, 0.977, 2.0], atol=2e-3)


def test_nrrd_masks_drawn_by_people_evaluate_by_case_name(real_data, tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    liver = real_data / "dcmqi_3slice" / "liver_seg.nrrd"
    spine = real_data / "dcmqi_3slice" / "spine_seg.nrrd"
    (ref / "case.nrrd").write_bytes(liver.read_bytes())
    (pred / "case.nrrd").write_bytes(spine.read_bytes())  # spine is label 2, liver label 1
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"liver": 1, "spine": 2, "heart": 3}))
    result = CliRunner().invoke(main, ["evaluate", "--pred", str(pred), "--ref", str(ref),
                                       "--output", str(tmp_path / "eval"), "--labels",
                                       str(labels)])
    assert result.exit_code == 0, result.output
    organs = json.loads((tmp_path / "eval" / "summary.json").read_text())["organs"]
    assert organs["liver"]["dice_mean"] == 0.0  # present in the reference only
    assert organs["spine"]["dice_mean"] == 0.0  # present in the prediction only
    assert organs["heart"]["n"] == 0  # absent on both sides: NaN, not counted
