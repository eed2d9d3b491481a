"""`medseg infer --model NNUNET_FOLDER` and `totalsegmentator:TASK` against nnU-Net's own answers.

The model folder in tests/data/nnunet was trained by nnU-Net itself (benchmarks/nnunet_fixture.py:
nnUNetTrainer on phantoms, a reduced 3d_fullres plan, folds 0 and 1), and
tests/data/nnunet/nnunet_predictions holds what `nnUNetv2_predict -f 0 1` wrote for the scans
beside it (with and without its mirroring TTA): the oracle. The real 20-slice DICOM series was
given to nnU-Net as SimpleITK's NIfTI conversion and to medseg as the DICOM folder itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import NNUNET_MODEL, run_cli_here, write_totalseg_home

FIXTURE = Path(__file__).parent / "data" / "nnunet"
MODEL = NNUNET_MODEL
PREDICTIONS = FIXTURE / "nnunet_predictions"
MIN_VOXELS = 50  # organs nnU-Net found with fewer voxels are too small for a stable Dice


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """The held-out phantoms nnU-Net predicted, drawn again (scans.json: seed, spacing,
    orientation) and checked voxel for voxel against the SHA-256 recorded when nnU-Net ran."""
    from medseg.data.io import save_nifti
    from medseg.data.phantoms import make_phantom

    folder = tmp_path_factory.mktemp("nnunet_scans")
    for name, spec in json.loads((FIXTURE / "scans.json").read_text()).items():
        phantom = make_phantom(spec["seed"], spacing=spec["spacing"],
                               orientation=spec["orientation"])
        assert hashlib.sha256(phantom.image.tobytes()).hexdigest() == spec["sha256"], (
            f"{name}: the phantom drawn now differs from the one nnU-Net predicted; rerun "
            "benchmarks/nnunet_fixture.py")
        save_nifti(phantom.image, phantom.affine, folder / "scans" / f"{name}_0000.nii.gz")
        save_nifti(phantom.label, phantom.affine, folder / "references" / f"{name}.nii.gz")
    return folder / "scans"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def _assert_agrees(mine: Path, theirs: Path, labels: dict[int, str]) -> dict[str, float]:
    """Same grid (shape, affine) and per-organ Dice >= 0.98 with nnU-Net's mask."""
    ours, oracle = nib.load(str(mine)), nib.load(str(theirs))
    assert ours.shape == oracle.shape
    np.testing.assert_allclose(ours.affine, oracle.affine, atol=1e-4)
    a, b = np.asarray(ours.dataobj), np.asarray(oracle.dataobj)
    scores = {labels[i]: _dice(a == i, b == i) for i in labels
              if i and (b == i).sum() >= MIN_VOXELS}
    assert scores, f"nnU-Net found no organ in {theirs.name}: the fixture model is broken"
    assert min(scores.values()) >= 0.98, scores
    return scores


@pytest.fixture(scope="module")
def small_scan(tmp_path_factory) -> Path:
    """A small CT-like volume: the input of the tests whose model is refused."""
    path = tmp_path_factory.mktemp("small") / "small.nii.gz"
    image = np.full((24, 20, 12), -1000, dtype=np.int16)
    image[6:18, 5:15, 3:9] = 40
    nib.save(nib.Nifti1Image(image, np.diag([2.0, 2.0, 5.0, 1.0])), str(path))
    return path


@pytest.fixture(scope="module")
def labels() -> dict[int, str]:
    dataset = json.loads((MODEL / "dataset.json").read_text())
    return {v: k for k, v in dataset["labels"].items()}


@pytest.mark.parametrize("tta", [False, True], ids=["no_tta", "tta"])
def test_phantoms_match_nnunet_predict(tmp_path, scans, labels, tta):
    """Every phantom without TTA; with TTA (8 mirrorings per window) the thick-slice one."""
    out = tmp_path / "out"
    oracle = PREDICTIONS / ("tta" if tta else "no_tta")
    inputs = scans / "phantom_thick_0000.nii.gz" if tta else scans
    proc = run_cli_here("infer", "--model", MODEL, "--input", inputs, "--output", out,
                        *(["--tta"] if tta else []))
    assert proc.returncode == 0, proc.stderr
    cases = sorted(oracle.glob("phantom_*.nii.gz"))
    assert len(cases) == (1 if tta else 3)
    for case in cases:
        _assert_agrees(out / case.name, case, labels)
        # The mask lies on the input's grid: nnU-Net's answer was written with SimpleITK's
        # geometry of the same file, so the affine check above compares two readers.


def test_the_real_dicom_series_matches_nnunet_on_its_nifti_conversion(tmp_path, labels,
                                                                      real_data):
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", MODEL, "--input", real_data / "petct_dicom" / "dicom",
                        "--output", out)
    assert proc.returncode == 0, proc.stderr
    scores = _assert_agrees(out / "dicom.nii.gz", PREDICTIONS / "no_tta" / "petct.nii.gz",
                            labels)
    print("real DICOM, per-organ Dice with nnUNetv2_predict:", scores)


@pytest.mark.parametrize("tta", [False, True], ids=["no_tta", "tta"])
def test_the_real_3_slice_series_matches_nnunet(tmp_path, labels, real_data, tta):
    """3 slices at 1 mm: 1 slice on the 5 mm working grid, padded to the 32-slice patch."""
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", MODEL, "--input", real_data / "dcmqi_3slice" /
                        "dicom", "--output", out, *(["--tta"] if tta else []))
    assert proc.returncode == 0, proc.stderr
    _assert_agrees(out / "dicom.nii.gz", PREDICTIONS / ("tta" if tta else "no_tta") /
                   "dcmqi3.nii.gz", labels)


def test_one_fold_differs_from_the_ensemble(tmp_path, scans):
    """--folds picks the folds: fold 1 alone gives another mask than folds 0 and 1 together."""
    scan = scans / "phantom_thin_0000.nii.gz"
    masks = {}
    for folds in ("1", "0,1"):
        out = tmp_path / folds.replace(",", "_")
        proc = run_cli_here("infer", "--model", MODEL, "--input", scan, "--output", out,
                            "--folds", folds)
        assert proc.returncode == 0, proc.stderr
        masks[folds] = np.asarray(nib.load(str(out / "phantom_thin.nii.gz")).dataobj)
    assert (masks["1"] != masks["0,1"]).any()
    default = tmp_path / "default"
    run_cli_here("infer", "--model", MODEL, "--input", scan, "--output", default)
    every_fold = np.asarray(nib.load(str(default / "phantom_thin.nii.gz")).dataobj)
    np.testing.assert_array_equal(every_fold, masks["0,1"])


def test_evaluate_pairs_the_models_organs_with_the_references_by_name(tmp_path, scans):
    out = tmp_path / "out"
    scan = scans / "phantom_thin_0000.nii.gz"
    assert run_cli_here("infer", "--model", MODEL, "--input", scan, "--output", out
                        ).returncode == 0
    written = json.loads((out / "labels.json").read_text())["labels"]
    assert written["5"] == "liver"
    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(scans.parent / "references" / "phantom_thin.nii.gz", refs)
    report = tmp_path / "report"
    proc = run_cli_here("evaluate", "--pred", out, "--ref", refs, "--output", report,
                        "--ref-labels", "synthetic")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((report / "summary.json").read_text())
    assert "liver" in json.dumps(summary)


# --- bad input: one clear line each ---------------------------------------------------------

def test_not_a_model_folder_is_one_line(tmp_path, small_scan):
    (tmp_path / "model" / "fold_0").mkdir(parents=True)
    (tmp_path / "model" / "fold_0" / "checkpoint_final.pth").write_bytes(b"PK")
    proc = run_cli_here("infer", "--model", tmp_path / "model", "--input", small_scan,
                        "--output", tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "not an nnU-Net trained-model folder (no plans.json)" in proc.stderr


def test_a_missing_fold_is_one_line(tmp_path, small_scan):
    proc = run_cli_here("infer", "--model", MODEL, "--input", small_scan,
                        "--output", tmp_path / "o",
                        "--folds", "4")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "fold_4 has no checkpoint (folds present: 0, 1)" in proc.stderr


def test_a_missing_configuration_is_one_line(tmp_path, small_scan):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"] = {"2d": plans["configurations"]["3d_fullres"]}
    (model / "plans.json").write_text(json.dumps(plans))
    proc = run_cli_here("infer", "--model", model, "--input", small_scan,
                        "--output", tmp_path / "o")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "plans.json: no configuration '3d_fullres' (it has 2d)" in proc.stderr


# --- TotalSegmentator's layout ----------------------------------------------------------------

# A TotalSegmentator-shaped weights folder (conftest.write_totalseg_home). Part 291 keeps the
# phantom organs; later parts name other TotalSegmentator classes, and overwrite earlier ones.
ORGANS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4, "liver": 5,
          "stomach": 6, "aorta": 7, "inferior_vena_cava": 8, "pancreas": 9}
OTHER_PARTS = {
    292: ["vertebrae_L5", "vertebrae_L4", "vertebrae_L3", "vertebrae_L2", "vertebrae_L1",
          "vertebrae_T12", "vertebrae_T11", "vertebrae_T10", "vertebrae_T9"],
    293: ["heart", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
          "subclavian_artery_left", "common_carotid_artery_right",
          "common_carotid_artery_left", "brachiocephalic_vein_left", "atrial_appendage_left"],
    294: ["humerus_left", "humerus_right", "scapula_left", "scapula_right", "clavicula_left",
          "clavicula_right", "femur_left", "femur_right", "hip_left"],
    295: ["rib_left_1", "rib_left_2", "rib_left_3", "rib_left_4", "rib_left_5", "rib_left_6",
          "rib_left_7", "rib_left_8", "rib_left_9"],
}


@pytest.fixture
def totalseg_home(tmp_path, monkeypatch) -> Path:
    home = write_totalseg_home(tmp_path / "ts", {291: list(ORGANS), **OTHER_PARTS})
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    return home


def _ts_ids() -> dict[str, int]:
    from medseg.data.labels import canonical_name
    from medseg.models.totalseg import class_map

    ids = {n: i for i, n in class_map().items()}
    return {name: ids[canonical_name(name)] for name in
            [*ORGANS, *[n for names in OTHER_PARTS.values() for n in names]]}


def test_totalsegmentator_parts_merge_in_order_with_its_class_ids(tmp_path, totalseg_home,
                                                                 scans):
    """On a scan already RAS at 1.5 mm, TotalSegmentator's own resampling changes nothing, so
    each part's mask is nnU-Net's mask renamed: the last part (295) is written last."""
    scan = scans / "phantom_ras15_0000.nii.gz"
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", "totalsegmentator:total", "--input", scan,
                        "--output", out)
    assert proc.returncode == 0, proc.stderr
    ids = _ts_ids()
    oracle = np.asarray(nib.load(str(PREDICTIONS / "no_tta" / "phantom_ras15.nii.gz")).dataobj)
    lookup = np.array([0, *[ids[n] for n in OTHER_PARTS[295]]], dtype=np.uint8)
    mine = np.asarray(nib.load(str(out / "phantom_ras15.nii.gz")).dataobj)
    for local, ts_id in enumerate(lookup[1:], start=1):
        if (oracle == local).sum() >= MIN_VOXELS:
            assert _dice(mine == ts_id, oracle == local) >= 0.98, OTHER_PARTS[295][local - 1]
    written = json.loads((out / "labels.json").read_text())["labels"]
    assert written[str(ids["rib_left_1"])] == "rib_left_1"


def test_roi_subset_runs_only_the_parts_that_have_those_classes(tmp_path, totalseg_home, scans):
    scan = scans / "phantom_ras15_0000.nii.gz"
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", "totalsegmentator:total", "--input", scan,
                        "--output", out, "--roi-subset", "liver,spleen")
    assert proc.returncode == 0, proc.stderr
    ids = _ts_ids()
    oracle = np.asarray(nib.load(str(PREDICTIONS / "no_tta" / "phantom_ras15.nii.gz")).dataobj)
    mine = np.asarray(nib.load(str(out / "phantom_ras15.nii.gz")).dataobj)
    assert set(np.unique(mine)) <= {0, ids["liver"], ids["spleen"]}
    for organ in ("liver", "spleen"):
        if (oracle == ORGANS[organ]).sum() >= MIN_VOXELS:
            assert _dice(mine == ids[organ], oracle == ORGANS[organ]) >= 0.98, organ
    assert json.loads((out / "labels.json").read_text())["labels"] == {
        "0": "background", str(ids["spleen"]): "spleen", str(ids["liver"]): "liver"}


def test_missing_totalsegmentator_weights_say_where_and_how(tmp_path, small_scan, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "nothing"))
    proc = run_cli_here("infer", "--model", "totalsegmentator:total_fast", "--input", small_scan,
                        "--output", tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nothing" / "nnunet" / "results") in proc.stderr
    assert "totalseg_download_weights -t total_fast" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_roi_names_are_named(tmp_path, small_scan, totalseg_home):
    proc = run_cli_here("infer", "--model", "totalsegmentator:total", "--input", small_scan,
                        "--output", tmp_path / "out", "--roi-subset", "liver,livr")
    assert proc.returncode == 2 and ("'livr' (did you mean liver?) not among "
                                     "totalsegmentator:total's organs") in proc.stderr


def test_an_nnunet_checkpoint_file_points_at_its_folder(tmp_path, small_scan):
    proc = run_cli_here("infer", "--model", MODEL / "fold_1" / "checkpoint_final.pth",
                        "--input", small_scan, "--output", tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"pass the model folder {MODEL} (with --folds 1 for this fold alone)" in proc.stderr


def test_options_of_one_kind_of_model_are_refused_for_another(tmp_path, small_scan, tiny_run):
    proc = run_cli_here("infer", "--model", tiny_run, "--input", small_scan, "--output",
                        tmp_path / "out", "--folds", "0")
    assert proc.returncode == 2 and "--folds applies to nnU-Net model folders" in proc.stderr


def test_roi_subset_keeps_only_those_organs_of_an_nnunet_model(tmp_path, scans, labels):
    """--roi-subset is for every model; the oracle is nnUNetv2_predict's whole mask."""
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", MODEL, "--input", scans / "phantom_thin_0000.nii.gz",
                        "--output", out, "--roi-subset", "Liver")
    assert proc.returncode == 0, proc.stderr
    oracle = np.asarray(nib.load(str(PREDICTIONS / "no_tta" / "phantom_thin.nii.gz")).dataobj)
    mine = np.asarray(nib.load(str(out / "phantom_thin.nii.gz")).dataobj)
    assert labels[5] == "liver" and set(np.unique(oracle)) == {0, 5, 6}  # liver and stomach
    assert set(np.unique(mine)) == {0, 5}
    assert _dice(mine == 5, oracle == 5) >= 0.98
    assert json.loads((out / "labels.json").read_text())["labels"] == {
        "0": "background", "5": "liver"}


def test_an_nnunet_model_is_not_ensembled_with_others(tmp_path, small_scan, tiny_run):
    proc = run_cli_here("infer", "--model", tiny_run, "--model", MODEL, "--input", small_scan,
                        "--output", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{MODEL}: an nnU-Net or TotalSegmentator model runs alone" in proc.stderr


def test_probabilities_lie_on_the_scan_grid_and_agree_with_the_mask(tmp_path, scans):
    """--save-probabilities: uint8 softmax on the scan's own axes; outside nnU-Net's crop box
    (none here: CT is nonzero everywhere) and wherever the mask says so, its class leads."""
    out = tmp_path / "out"
    proc = run_cli_here("infer", "--model", MODEL, "--input", scans / "phantom_thin_0000.nii.gz",
                        "--output", out, "--save-probabilities")
    assert proc.returncode == 0, proc.stderr
    mask = np.asarray(nib.load(str(out / "phantom_thin.nii.gz")).dataobj)
    probs = np.asarray(nib.load(str(out / "phantom_thin_probabilities.nii.gz")).dataobj)
    assert probs.shape == (*mask.shape, 10)
    np.testing.assert_allclose(probs.sum(-1), 255, atol=6)  # rounding of 10 classes
    assert (probs.argmax(-1) == mask).mean() > 0.999  # ties at uint8 precision may differ


def _region_model(tmp_path) -> Path:
    """The test network read as a 10-region model (BraTS-style unions), to run its path."""
    model = tmp_path / "regions"
    shutil.copytree(MODEL, model)
    spec = json.loads((model / "dataset.json").read_text())
    spec["labels"] = {"background": 0, **{f"region_{i}": list(range(i, 11)) for i in range(1, 11)}}
    spec["regions_class_order"] = list(range(1, 11))
    (model / "dataset.json").write_text(json.dumps(spec))
    return model


def test_a_region_model_runs_and_refuses_probabilities(tmp_path, small_scan):
    model = _region_model(tmp_path)
    proc = run_cli_here("infer", "--model", model, "--input", small_scan, "--output",
                        tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "out" / "labels.json").read_text())["labels"]
    assert written["10"] == "region_10" and len(written) == 11
    proc = run_cli_here("infer", "--model", model, "--input", small_scan, "--output",
                        tmp_path / "out2", "--save-probabilities")
    assert proc.returncode == 2 and "has no class probabilities to save" in proc.stderr


def test_crf_refines_an_nnunet_model_on_its_working_grid(tmp_path, scans, labels):
    """--crf on an imported model: the same grid, some boundary voxels moved, and the organs the
    model finds (liver and stomach for this small network) no worse against the phantom's truth
    than nnU-Net's own mask (measured: liver 0.843 -> 0.832, stomach 0.551 -> 0.666). A
    region-based model, which has no class probabilities, is refused in one line."""
    scan = scans / "phantom_thin_0000.nii.gz"
    proc = run_cli_here("infer", "--model", MODEL, "--input", scan, "--output", tmp_path / "crf",
                        "--crf")
    assert proc.returncode == 0, proc.stderr
    refined = nib.load(str(tmp_path / "crf" / "phantom_thin.nii.gz"))
    oracle = nib.load(str(PREDICTIONS / "no_tta" / "phantom_thin.nii.gz"))
    assert refined.shape == oracle.shape
    np.testing.assert_allclose(refined.affine, oracle.affine, atol=1e-4)
    ours, theirs = np.asarray(refined.dataobj), np.asarray(oracle.dataobj)
    truth = np.asarray(nib.load(str(scans.parent / "references" / "phantom_thin.nii.gz")).dataobj)
    assert (ours != theirs).sum() > 1000
    for label in (i for i in labels if i and _dice(theirs == i, truth == i) > 0.3):
        assert _dice(ours == label, truth == label) >= _dice(theirs == label, truth == label) - 0.05
    proc = run_cli_here("infer", "--model", _region_model(tmp_path), "--input", scan,
                        "--output", tmp_path / "regions", "--crf")
    assert proc.returncode == 2 and "--crf cannot refine this model" in proc.stderr


def test_crf_on_the_real_3_slice_series_keeps_its_grid(tmp_path, labels, real_data):
    """The real 3-slice series is one slice on the working grid (padded to the patch): the CRF
    runs there too, and the mask keeps the grid of nnUNetv2_predict's mask and its label ids
    (measured against the series' liver: 0.274 without, 0.183 with the CRF; docs/models.md)."""
    proc = run_cli_here("infer", "--model", MODEL, "--input", real_data / "dcmqi_3slice" /
                        "dicom", "--output", tmp_path / "out", "--crf")
    assert proc.returncode == 0, proc.stderr
    refined = nib.load(str(tmp_path / "out" / "dicom.nii.gz"))
    oracle = nib.load(str(PREDICTIONS / "no_tta" / "dcmqi3.nii.gz"))
    assert refined.shape == oracle.shape == (512, 512, 3)
    np.testing.assert_allclose(refined.affine, oracle.affine, atol=1e-4)
    assert set(np.unique(np.asarray(refined.dataobj))) <= set(labels)


def test_crf_reaches_the_totalsegmentator_parts_it_runs(tmp_path, totalseg_home, scans):
    """--crf passes to each part TotalSegmentator runs: the organs stay those asked for, and
    the liver moves off the plain run's at boundaries while agreeing with it on the whole."""
    scan = scans / "phantom_ras15_0000.nii.gz"
    masks = {}
    for kind, extra in (("plain", []), ("crf", ["--crf"])):
        proc = run_cli_here("infer", "--model", "totalsegmentator:total", "--input", scan,
                            "--output", tmp_path / kind, "--roi-subset", "liver,spleen", *extra)
        assert proc.returncode == 0, proc.stderr
        masks[kind] = np.asarray(nib.load(str(tmp_path / kind / "phantom_ras15.nii.gz")).dataobj)
    ids = _ts_ids()
    assert set(np.unique(masks["crf"])) <= {0, ids["liver"], ids["spleen"]}
    liver = {kind: mask == ids["liver"] for kind, mask in masks.items()}
    assert (liver["crf"] != liver["plain"]).sum() > 0
    assert _dice(liver["crf"], liver["plain"]) >= 0.8
