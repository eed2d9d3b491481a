"""Real de-identified CT from ../shared/data flowing through infer and evaluate (skips without)."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REAL_LABELS

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


def _canonical(path) -> tuple[np.ndarray, np.ndarray]:
    """A mask's voxels and affine in RAS axis order, so files stored differently compare."""
    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(image.dataobj), image.affine


def _dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    return 2.0 * np.logical_and(p, r).sum() / (p.sum() + r.sum())


def test_plan_on_the_real_case_gives_a_patch_that_fits_it(real_case):
    import SimpleITK as sitk

    from medseg.training.planning import make_plan

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(real_case.parent / "images" / "petct")))
    series = reader.Execute()
    extent_mm = np.array(series.GetSize()) * np.array(series.GetSpacing())  # 500 x 500 x 40
    plan = make_plan(real_case, device="cpu")
    voxels = extent_mm / np.array(plan["spacing"])
    assert all(p <= n for p, n in zip(plan["patch_size"], voxels)), (plan["patch_size"], voxels)
    # 20 slices are not rounded up to a 32-slice patch; the slice axis is pooled less.
    strides = plan["model_kwargs"]["strides"]
    assert sum(level[2] == 2 for level in strides) < sum(level[0] == 2 for level in strides)


# Fine enough for the aorta (about 20 mm across), small patches so that a minute of 2-core CPU
# time trains enough steps; 12 slices at 3 mm: the scan's 13.3 slices, nearly whole.
REAL_FIT_ARGS = ["--spacing", "3,3,3", "--patch-size", "48,48,12", "--epochs", "30",
                 "--val-every", "30"]


def test_fit_the_real_scan_and_segment_it_through_infer(real_case, tmp_path):
    """About a minute of training on the real 20-slice series must fit it: through
    `medseg infer`, Dice >= 0.90 for each organ it holds. Training and inference disagreeing on
    anything about the input (padding, normalisation, geometry) makes this fail."""
    run, masks = tmp_path / "run", tmp_path / "masks"
    trained = CliRunner().invoke(main, ["train", "--manifest", str(real_case), "--output",
                                        str(run), *REAL_FIT_ARGS])
    assert trained.exit_code == 0, trained.output
    assert "class 'right_kidney' (3) is in no training case" in trained.output
    inferred = CliRunner().invoke(main, ["infer", "--model", str(run), "--input",
                                         str(real_case.parent / "images" / "petct"), "--output",
                                         str(masks)])
    assert inferred.exit_code == 0, inferred.output
    pred, pred_affine = _canonical(masks / "petct.nii.gz")  # folder X/ -> X.nii.gz
    ref, ref_affine = _canonical(real_case.parent / "labels" / "petct.nii.gz")
    np.testing.assert_allclose(pred_affine, ref_affine, atol=1e-3)
    dice = {organ: _dice(pred, ref, label) for label, organ in REAL_LABELS.items()
            if organ in ("liver", "spleen", "stomach", "aorta")}
    assert all(d >= 0.90 for d in dice.values()), dice


def _fitted_dice(manifest, output, patch) -> float:
    """Mean validation Dice (the predictor's own code, on the working grid) of liver, spleen
    and stomach after a short fit of the real case at 6 mm, where it is 83 x 83 x 6.7 voxels.
    Measured: 0.912 with a patch inside the scan; 0.898 with 12 slices; 0.948 with 96 x 96."""
    import csv

    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    train(TrainConfig(manifest=str(manifest), output=str(output), spacing=(6.0, 6.0, 6.0),
                      patch_size=patch, epochs=7, val_every=7, device="cpu"))
    with open(output / "log.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return float(np.mean([float(last[organ]) for organ in ("liver", "spleen", "stomach")]))


@pytest.fixture(scope="module")
def fitting_patch_dice(real_case, tmp_path_factory) -> float:
    return _fitted_dice(real_case, tmp_path_factory.mktemp("fits"), (48, 48, 4))


@pytest.mark.parametrize("patch", [(48, 48, 12), (96, 48, 4), (48, 96, 4)],
                         ids=["thinner-than-patch", "narrower-in-x", "narrower-in-y"])
def test_a_scan_smaller_than_the_patch_is_fitted_as_well_as_one_that_is_not(
        real_case, tmp_path, fitting_patch_dice, patch):
    """The patch exceeds the scan along one axis: training pads it with air (label background)
    as inference does, so it fits as well as with a patch inside the scan."""
    dice = _fitted_dice(real_case, tmp_path / "run", patch)
    assert fitting_patch_dice >= 0.85
    assert dice >= fitting_patch_dice - 0.05, (dice, fitting_patch_dice)


def test_the_python_api_segments_the_real_dicom_series_as_the_command_does(real_data, tiny_run,
                                                                            tmp_path):
    from medseg import Segmenter

    series = real_data / "petct_dicom" / "dicom"
    result = Segmenter(tiny_run, device="cpu")(series)
    done = CliRunner().invoke(main, ["infer", "--model", str(tiny_run), "--input", str(series),
                                     "--output", str(tmp_path)])
    assert done.exit_code == 0, done.output
    written = nib.load(str(tmp_path / "dicom.nii.gz"))
    assert result.mask.shape == written.shape == (512, 512, 20)
    np.testing.assert_allclose(result.affine, written.affine, atol=1e-4)
    assert np.array_equal(result.mask, np.asarray(written.dataobj))


def test_the_api_segments_the_three_slice_case_on_the_grid_its_people_drew_on(real_data,
                                                                              tiny_run):
    """The 3-slice series (LPS) through the Python API: the mask lies on the grid of the liver
    mask a person drew, as SimpleITK itself reads that NRRD (LPS turned into RAS here)."""
    import SimpleITK as sitk

    from medseg import Segmenter

    case = real_data / "dcmqi_3slice"
    result = Segmenter(tiny_run, device="cpu")(case / "dicom")
    drawn = sitk.ReadImage(str(case / "liver_seg.nrrd"))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(drawn.GetDirection()).reshape(3, 3) @ np.diag(drawn.GetSpacing())
    lps[:3, 3] = drawn.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert result.mask.shape == drawn.GetSize() == (512, 512, 3)
    np.testing.assert_allclose(result.affine, ras, atol=1e-3)


def test_the_api_plans_the_real_case_and_says_so_when_a_plan_is_there(real_case, tmp_path):
    from medseg import plan
    from medseg.errors import MedsegError

    made, path = plan(real_case, tmp_path / "plan.json", device="cpu")
    assert path == tmp_path / "plan.json" and json.loads(path.read_text()) == made
    assert made["patch_size"][2] <= 20  # never more slices than the 20-slice scan holds
    with pytest.raises(MedsegError, match="a plan .* is already there; pass --overwrite"):
        plan(real_case, tmp_path / "plan.json", device="cpu")


def test_the_real_series_as_an_nnunet_raw_data_set_plans_like_its_decathlon_form(real_case,
                                                                                tmp_path):
    """nnU-Net v2 raw layout, the image converted to NIfTI by SimpleITK (as nnU-Net users do),
    plans the same spacing, normalisation and patch as the DICOM series in Decathlon form."""
    import shutil

    import SimpleITK as sitk

    from medseg.api import plan

    raw = tmp_path / "Dataset900_PetCT"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    series = real_case.parent / "images" / "petct"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    sitk.WriteImage(reader.Execute(), str(raw / "imagesTr" / "petct_0000.nii.gz"))
    shutil.copy(real_case.parent / "labels" / "petct.nii.gz", raw / "labelsTr" / "petct.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {n: i for i, n in REAL_LABELS.items()},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    theirs, _ = plan(raw / "dataset.json", tmp_path / "raw_plan.json", device="cpu")
    ours, _ = plan(real_case, tmp_path / "decathlon_plan.json", device="cpu")
    for key in ("spacing", "patch_size", "intensity"):
        assert theirs[key] == ours[key], key
