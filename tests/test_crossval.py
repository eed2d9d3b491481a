"""`medseg crossval`: folds trained, every case predicted once out of fold, postprocessing chosen
per organ by nnU-Net's rule, the folder used as a model, and a stopped run continued."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_TRAIN_ARGS, convert_3slice, run_cli_here
from scipy import ndimage

from medseg.cross_validation import choose_postprocessing
from medseg.data.files import case_name
from medseg.data.manifest import load_manifest
from medseg.errors import MedsegError
from medseg.inference.batch import mask_author
from medseg.models.contract import MODEL_ID_PREFIX
from medseg.models.medseg_run import files_digest
from medseg.models.open import open_model


def read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def cross_validation(tiny_dataset, tmp_path_factory) -> tuple[Path, str]:
    """Two folds over the three tiny phantoms, a few iterations each, by two ranks under
    torchrun (each its own fold); the folder and what the command printed."""
    out = tmp_path_factory.mktemp("crossval") / "cv"
    proc = subprocess.run([sys.executable, "-m", "cli", "crossval", "--manifest",
                           str(tiny_dataset), "--output", str(out), "--folds", "2",
                           *TINY_TRAIN_ARGS, "--nproc", "2"], capture_output=True, text=True,
                          errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "out-of-fold mean Dice" in proc.stdout
    return out, proc.stdout


@pytest.fixture(scope="module")
def cross_validated(cross_validation) -> Path:
    return cross_validation[0]


def test_two_ranks_under_torchrun_train_one_fold_each(cross_validation):
    out, printed = cross_validation
    started = [line for line in printed.splitlines() if line.startswith("fold ")]
    assert sorted(started) == ["fold 0 of 2", "fold 1 of 2"]  # each fold trained once
    assert (out / "postprocessing.json").exists()


def test_every_case_is_predicted_once_by_the_fold_that_held_it_out(cross_validated,
                                                                   tiny_dataset):
    cases, _ = load_manifest(tiny_dataset)
    held_out = [json.loads((cross_validated / f"fold_{k}" / "split.json").read_text())
                ["validation"] for k in range(2)]
    assert sorted(held_out[0] + held_out[1]) == sorted(c["image"] for c in cases)
    masks = cross_validated / "oof" / "predictions"
    assert len(list(masks.glob("*.nii.gz"))) == len(cases)
    for k, images in enumerate(held_out):
        fold = MODEL_ID_PREFIX + files_digest([cross_validated / f"fold_{k}" / "last.pt"])
        for image in images:
            assert mask_author(masks / f"{case_name(Path(image))}.nii.gz") == fold


def test_the_choice_and_the_pooled_evaluation_agree(cross_validated):
    """Dice from counting components (the choice) equals Dice from cleaning the masks and
    evaluating them (the report), for every organ, without and with the chosen variant."""
    chosen = json.loads((cross_validated / "postprocessing.json").read_text())
    summary = json.loads((cross_validated / "oof" / "evaluation" / "summary.json").read_text())
    assert chosen["mean_dice"] == pytest.approx(summary["mean_dice"])
    recorded = json.loads((cross_validated / "crossval.json").read_text())
    assert recorded["folds"] == 2 and recorded["out_of_fold"]["mean_dice"] == chosen["mean_dice"]
    for organ, choice in chosen["organs"].items():
        scores = choice["out_of_fold_dice"]
        if choice["dice"] is None:
            continue
        assert scores["none"] == pytest.approx(choice["dice"], abs=1e-9), organ
        assert scores[choice["chosen"]] == pytest.approx(choice["dice_postprocessed"], abs=1e-9)
        assert choice["chosen"] == "none" or scores[choice["chosen"]] > scores["none"]


def test_the_folder_is_a_model_that_ensembles_its_folds_and_postprocesses(
        cross_validated, tiny_dataset, tmp_path):
    cases, labels = load_manifest(tiny_dataset)
    scan = Path(cases[0]["image"])
    folds = [cross_validated / "fold_0" / "last.pt", cross_validated / "fold_1" / "last.pt"]
    ensemble = run_cli_here("infer", "--model", folds[0], "--model", folds[1], "--input", scan,
                            "--output", tmp_path / "ensemble")
    assert ensemble.returncode == 0, ensemble.stderr
    expected = read(tmp_path / "ensemble" / f"{case_name(scan)}.nii.gz")
    # Keep-largest for every organ, set by hand: the folder's masks must be the ensemble's
    # with each organ cut to its largest 26-connected component (scipy, by hand).
    rules = cross_validated / "postprocessing.json"
    chosen = json.loads(rules.read_text())
    saved = rules.read_text()
    for organ in chosen["organs"].values():
        organ.update(keep_largest=True, min_volume_mm3=0.0)
    rules.write_text(json.dumps(chosen))
    try:
        proc = run_cli_here("infer", "--model", cross_validated, "--input", scan, "--output",
                            tmp_path / "folder")
    finally:
        rules.write_text(saved)
    assert proc.returncode == 0, proc.stderr
    got = read(tmp_path / "folder" / f"{case_name(scan)}.nii.gz")
    by_hand = np.zeros_like(expected)
    for organ in range(1, len(labels)):
        components, count = ndimage.label(expected == organ, structure=np.ones((3, 3, 3)))
        if count:
            sizes = np.bincount(components.ravel())[1:]
            by_hand[components == 1 + int(np.argmax(sizes))] = organ
    np.testing.assert_array_equal(got, by_hand)
    assert (got != expected).any()  # the tiny model's masks have stray pieces to remove


def test_a_stopped_cross_validation_continues_where_it_stopped(tiny_dataset, tmp_path,
                                                               monkeypatch):
    import dataclasses

    import medseg.cross_validation as cv
    from medseg.training.recipes import build_config

    config = build_config(None, {"manifest": str(tiny_dataset), "output": str(tmp_path / "cv"),
                                 "epochs": 1, "iters_per_epoch": 2, "batch_size": 1,
                                 "spacing": (8.0, 8.0, 8.0), "patch_size": (32, 32, 16),
                                 "model_kwargs": {"channels": [4, 8, 16]}})
    real_predict = cv.predict_held_out

    def stop_at_fold_1(output, fold, device):
        if fold == 1:
            raise KeyboardInterrupt
        real_predict(output, fold, device)

    monkeypatch.setattr(cv, "predict_held_out", stop_at_fold_1)
    with pytest.raises(KeyboardInterrupt):
        cv.crossval(config, folds=2, figures=False)
    assert not (tmp_path / "cv" / "postprocessing.json").exists()
    monkeypatch.setattr(cv, "predict_held_out", real_predict)
    fold_0 = tmp_path / "cv" / "fold_0" / "last.pt"
    trained_at = fold_0.stat().st_mtime_ns
    with pytest.raises(MedsegError, match="has not finished"):
        open_model(tmp_path / "cv")
    summary = cv.crossval(config, folds=2, figures=False)
    assert fold_0.stat().st_mtime_ns == trained_at  # finished folds are not trained again
    assert summary["mean_dice"] is not None
    # Two more epochs: each fold resumes from its last.pt, its out-of-fold masks are redone.
    cv.crossval(dataclasses.replace(config, epochs=2), folds=2, figures=False)
    for k in range(2):
        fold = tmp_path / "cv" / f"fold_{k}"
        log = (fold / "log.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in log[1:]] == ["1", "2"]
        # The fold's config.json says it was continued, not trained for 2 epochs in one go.
        recorded = json.loads((fold / "config.json").read_text())
        assert recorded["resumed"] == [{"after_epoch": 1, "to_epoch": 2}]
        now = MODEL_ID_PREFIX + files_digest([fold / "last.pt"])
        for image in json.loads((fold / "split.json").read_text())["validation"]:
            mask = tmp_path / "cv" / "oof" / "predictions" / f"{case_name(Path(image))}.nii.gz"
            assert mask_author(mask) == now


def test_refusals_are_one_line(tiny_dataset, tmp_path):
    out = tmp_path / "cv"
    proc = run_cli_here("crossval", "--manifest", tiny_dataset, "--output", out, "--folds", "4",
                        *TINY_TRAIN_ARGS)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tiny_dataset}: 4 folds need at least 4 cases, the data set has 3; use "
        "--folds 3 or fewer")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    proc = run_cli_here("crossval", "--manifest", tiny_dataset, "--output", tmp_path / "other",
                        "--folds", "2", *TINY_TRAIN_ARGS)
    assert proc.returncode == 2 and "not empty and not a cross-validation" in proc.stderr
    (out).mkdir()
    (out / "crossval.json").write_text(json.dumps(
        {"manifest": str(Path(tiny_dataset).resolve()), "folds": 3, "seed": 0}))
    proc = run_cli_here("crossval", "--manifest", tiny_dataset, "--output", out, "--folds", "2",
                        *TINY_TRAIN_ARGS)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {out}: holds a cross-validation with another folds; continue it with the same "
        "settings, or add --overwrite to start again")


def write_pair(folder: Path, name: str, prediction: np.ndarray, reference: np.ndarray):
    for kind, array in (("pred", prediction), ("ref", reference)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array.astype(np.uint8), np.eye(4)),
                 str(folder / kind / f"{name}.nii.gz"))
    return folder / "pred" / f"{name}.nii.gz", folder / "ref" / f"{name}.nii.gz"


def test_postprocessing_is_kept_only_where_it_raises_the_organs_dice(tmp_path):
    """Organ 1: a true 8-voxel block and a spurious 1-voxel speck: dropping the speck raises
    its Dice from 2*8/(9+8) to 1. Organ 2: two true blocks (8 and 4 voxels) found whole:
    keeping the largest lowers its Dice to 2*8/(8+12), so nothing is applied."""
    reference = np.zeros((12, 12, 12), np.uint8)
    reference[1:3, 1:3, 1:3] = 1
    reference[6:8, 6:8, 1:3] = 2
    reference[6:8, 6:7, 8:10] = 2
    prediction = reference.copy()
    prediction[10, 10, 10] = 1
    pair = write_pair(tmp_path, "case", prediction, reference)
    chosen = choose_postprocessing([pair], {0: "background", 1: "liver", 2: "kidneys"})
    liver, kidneys = chosen["liver"], chosen["kidneys"]
    assert liver["out_of_fold_dice"]["none"] == pytest.approx(16 / 17)
    assert liver["out_of_fold_dice"]["keep_largest"] == 1.0
    # Components under 2% of 8 voxels: none; under 25% (2 voxels): the speck goes.
    assert liver["out_of_fold_dice"]["remove_under_0.02_of_median"] == pytest.approx(16 / 17)
    assert liver["out_of_fold_dice"]["remove_under_0.25_of_median"] == 1.0
    assert liver["chosen"] == "keep_largest" and liver["keep_largest"] is True
    assert kidneys["out_of_fold_dice"]["none"] == 1.0
    assert kidneys["out_of_fold_dice"]["keep_largest"] == pytest.approx(16 / 20)
    assert kidneys["chosen"] == "none" and kidneys["keep_largest"] is False


def test_real_series_cross_validate(real_case, real_data, tmp_path):
    """Two real scans, each predicted by the fold trained on the other: the 20-slice series
    (DICOM, liver from TotalSegmentator) and the 3-slice one (DICOM, liver drawn by people,
    from NRRD via `medseg convert`), in one data set of their livers; each fold fine-tunes the
    nnU-Net phantom model for two iterations."""
    from medseg import crossval

    raw = convert_3slice(real_data, tmp_path, organs=("liver",), case="ct3")
    petct, _ = load_manifest(real_case)
    label = nib.load(petct[0]["label"])
    liver = np.asarray(label.dataobj) == 1  # REAL_LABELS: liver is 1
    nib.save(nib.Nifti1Image(liver.astype(np.uint8), label.affine),
             str(tmp_path / "petct_liver.nii.gz"))
    manifest = tmp_path / "livers.json"
    manifest.write_text(json.dumps({"labels": {"1": "liver"}, "root": "/", "training": [
        {"image": petct[0]["image"], "label": str(tmp_path / "petct_liver.nii.gz")},
        {"image": str(raw / "imagesTr" / "ct3_0000.nii.gz"),
         "label": str(raw / "labelsTr" / "ct3.nii.gz")}]}))
    out = tmp_path / "cv"
    summary = crossval(manifest=str(manifest), output=str(out), folds=2, figures=False,
                       epochs=1, iters_per_epoch=1, batch_size=1, lr=1e-3, contrast_prob=0.0,
                       init_from=str(Path(__file__).parent / "data" / "nnunet" / "model"))
    # Each mask on its scan's own grid (the series' folder is called dicom).
    assert nib.load(str(out / "oof" / "predictions" / "dicom.nii.gz")).shape == label.shape
    assert nib.load(str(out / "oof" / "predictions" / "ct3.nii.gz")).shape == nib.load(
        str(raw / "imagesTr" / "ct3_0000.nii.gz")).shape
    liver = summary["organs"]["liver"]
    per_case = {row.split(",")[0]: float(row.split(",")[3]) for row in
                (out / "oof" / "evaluation" / "per_case.csv").read_text().splitlines()[1:]}
    print("real series, out-of-fold liver Dice", per_case, "chosen", liver["chosen"],
          liver["dice_postprocessed"])
    # The model's phantom knowledge carries to the 20-slice series (nnUNetv2_predict: 0.75).
    assert liver["cases"] == 2 and per_case["dicom"] >= 0.6
    assert liver["dice"] == pytest.approx(np.mean(list(per_case.values())))
    assert liver["chosen"] == "none" or liver["dice_postprocessed"] > liver["dice"]
