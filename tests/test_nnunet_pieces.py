"""nnU-Net model folders, piece by piece: window placement, resampling, safe loading, errors.

Oracles: nnU-Net's own worked example (its source comments), scipy's interpolators (which
nnU-Net calls through skimage), hand computation; the end-to-end parity with nnU-Net's
predictions is tests/test_nnunet.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.models.nnunet import export, preprocessing, windows
from medseg.models.nnunet.folder import read_labels, read_model_folder
from medseg.models.options import EngineOptions

FIXTURE = Path(__file__).parent / "data" / "nnunet"
MODEL = FIXTURE / "model"


def test_windows_are_placed_as_nnunet_documents():
    # nnU-Net's comment: image 110, patch 64, step 0.5 -> three steps at 0, 23, 46.
    assert windows.window_starts(110, 64, 0.5) == [0, 23, 46]
    assert windows.window_starts(64, 64, 0.5) == [0]
    assert windows.window_starts(65, 64, 0.5) == [0, 1]  # ceil(1 / 32) + 1 = 2 windows


def test_the_gaussian_peaks_at_ten_in_the_centre_and_has_no_zero():
    weights = windows.gaussian_weights((9, 16, 16))
    assert weights.shape == (9, 16, 16)
    assert float(weights[4, 8, 8]) == pytest.approx(10.0, rel=1e-3)
    assert float(weights.min()) > 0
    # sigma = patch / 8 along each axis: one sigma (2 voxels) off-centre in-plane, e^-0.5.
    assert float(weights[4, 10, 8]) / 10 == pytest.approx(np.exp(-0.5), rel=0.02)


def test_the_crop_is_the_box_of_nonzero_voxels():
    image = np.zeros((6, 7, 8), dtype=np.float32)
    image[1, 2, 3] = 5
    image[4, 5, 6] = -3
    assert preprocessing.nonzero_box(image) == (slice(1, 5), slice(2, 6), slice(3, 7))


def test_separate_z_follows_nnunets_anisotropy_rule():
    assert preprocessing.separate_axis((5.0, 1.0, 1.0), (2.0, 2.0, 2.0)) == 0  # current anisotropic
    assert preprocessing.separate_axis((1.0, 1.0, 1.0), (1.0, 4.0, 1.0)) == 1  # target anisotropic
    assert preprocessing.separate_axis((3.0, 1.0, 1.0), (2.0, 2.0, 2.0)) is None  # ratio 3: not > 3
    assert preprocessing.separate_axis((4.0, 4.0, 1.0), (1.0, 1.0, 1.0)) is None  # two thick axes


def test_nearest_slices_match_scipys_order_zero_map_coordinates():
    rng = np.random.default_rng(0)
    for old, new in ((7, 18), (18, 7), (20, 8), (5, 5)):
        column = rng.normal(size=old)
        coords = (np.arange(new) + 0.5) * (old / new) - 0.5
        expected = ndimage.map_coordinates(column, [coords], order=0, mode="nearest")
        np.testing.assert_array_equal(column[preprocessing.nearest_index(old, new)], expected)


def test_cubic_resampling_is_scipys_zoom_on_the_cell_grid_clipped():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(6, 9, 11)).astype(np.float32)
    out = preprocessing.resample_image(image, (10, 5, 13), (2.0, 1.0, 1.0), (1.2, 1.8, 0.85))
    expected = ndimage.zoom(image.astype(np.float64), (10 / 6, 5 / 9, 13 / 11), order=3,
                            mode="nearest", grid_mode=True)
    expected = np.clip(expected, image.min(), image.max())
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_thick_slices_resample_in_plane_then_nearest_along_z():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(5, 8, 8)).astype(np.float32)
    out = preprocessing.resample_image(image, (12, 16, 16), (5.0, 1.0, 1.0), (2.0, 0.5, 0.5))
    for z in range(12):
        source = int(np.floor((z + 0.5) * 5 / 12))
        plane = ndimage.zoom(image[source].astype(np.float64), 2, order=3, mode="nearest",
                             grid_mode=True)
        np.testing.assert_allclose(out[z], np.clip(plane, image[source].min(),
                                                   image[source].max()), atol=1e-5)


@pytest.mark.parametrize("target,spacing", [((2.0, 2.0, 2.0), (1.0, 1.5, 1.2)),
                                            ((5.0, 1.0, 1.0), (2.0, 0.8, 0.8))])
def test_logits_go_back_as_scipys_linear_zoom_would_take_them(target, spacing):
    """Slab by slab equals nnU-Net's whole-volume order-1 resampling, then argmax."""
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(size=(4, 6, 10, 9)).astype(np.float32))
    shape = preprocessing.new_shape(logits.shape[1:], target, spacing)
    mask, probs = export.back_to_crop(logits, shape, spacing, target, keep_probabilities=True)
    axis = preprocessing.separate_axis(target, spacing)
    expected = []
    for channel in logits.numpy().astype(np.float64):
        if axis is None:
            expected.append(ndimage.zoom(channel, np.divide(shape, channel.shape), order=1,
                                         mode="nearest", grid_mode=True))
        else:
            planes = np.stack([ndimage.zoom(p, np.divide(shape[1:], p.shape), order=1,
                                            mode="nearest", grid_mode=True) for p in channel])
            expected.append(planes[preprocessing.nearest_index(channel.shape[0], shape[0])])
    expected = np.stack(expected)
    assert mask.shape == tuple(shape)
    agree = (mask == expected.argmax(0)).mean()
    assert agree > 0.999, agree  # only float32-vs-float64 near-ties may differ
    np.testing.assert_allclose(probs.sum(0), 255, atol=4)


def test_label_maps_gaps_and_the_ignore_label(tmp_path):
    with pytest.raises(MedsegError, match="not 0..1"):
        read_labels({"labels": {"background": 0, "liver": 2}}, tmp_path)
    # nnU-Net's ignore label is not a class the network predicts.
    assert read_labels({"labels": {"background": 0, "liver": 1, "ignore": 2}}, tmp_path) == (
        {0: "background", 1: "liver"}, None)


BRATS = {"labels": {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3],
                    "enhancing_tumor": [3]}, "regions_class_order": [1, 2, 3]}


def test_region_models_write_each_region_over_the_last_as_nnunet_does(tmp_path):
    labels, regions = read_labels(BRATS, tmp_path)
    assert labels == {0: "background", 1: "whole_tumor", 2: "tumor_core", 3: "enhancing_tumor"}
    assert regions == (1, 2, 3)
    # Hand-worked: sigmoid > 0.5 is logit > 0; later regions are written over earlier ones.
    logits = torch.tensor([[2.0, 2.0, 2.0, -1.0],
                           [1.0, -1.0, 3.0, -1.0],
                           [-1.0, 1.0, 0.5, -1.0]])[:, :, None]
    assert export.labels_from_logits(logits, regions)[:, 0].tolist() == [2, 3, 3, 0]
    with pytest.raises(MedsegError, match="regions_class_order with one value per region"):
        read_labels({"labels": BRATS["labels"]}, tmp_path)


def test_a_folder_without_plans_is_not_a_model(tmp_path):
    from medseg.models.nnunet.folder import is_nnunet_folder

    (tmp_path / "fold_0").mkdir()
    assert not is_nnunet_folder(tmp_path)  # medseg's own "runs/fold_0" stays medseg's
    (tmp_path / "fold_0" / "checkpoint_best.pth").write_bytes(b"PK")
    assert is_nnunet_folder(tmp_path)
    with pytest.raises(MedsegError, match=r"not an nnU-Net trained-model folder \(no plans.json\)"):
        read_model_folder(tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model, ignore=shutil.ignore_patterns("fold_*"))
    (model / "fold_0").mkdir()
    _RunsCode.marker = tmp_path / "it_ran"
    payload = {"network_weights": {}, "init_args": {"configuration": "3d_fullres"},
               "trainer_name": "nnUNetTrainer", "evil": _RunsCode()}
    torch.save(payload, model / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(MedsegError, match=r"refused, it holds pickled code \(posix.system\)"):
        read_model_folder(model)
    assert not _RunsCode.marker.exists()
    # The same bytes through pickle itself would have run it: the test's payload is live.
    with zipfile.ZipFile(model / "fold_0" / "checkpoint_final.pth") as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)
    assert _RunsCode.marker.exists()


def test_nnunets_own_checkpoint_loads_with_weights_only():
    model = read_model_folder(MODEL)
    assert model.trainer == "nnUNetTrainer" and model.configuration_name == "3d_fullres"
    assert [p.parent.name for p in model.checkpoints] == ["fold_0", "fold_1"]
    assert model.mirror_axes == (0, 1, 2)
    assert model.labels[5] == "liver"


def test_folds_missing_or_chosen(tmp_path):
    assert [p.parent.name for p in read_model_folder(MODEL, "1").checkpoints] == ["fold_1"]
    with pytest.raises(MedsegError, match=r"fold_3 has no checkpoint \(folds present: 0, 1\)"):
        read_model_folder(MODEL, "0,3")


def _copy_with_plans(tmp_path, change) -> Path:
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    plans = json.loads((model / "plans.json").read_text())
    change(plans["configurations"]["3d_fullres"])
    (model / "plans.json").write_text(json.dumps(plans))
    return model


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(normalization_schemes=["MyNormalization"]),
     "does not support normalization MyNormalization"),
    (lambda c: c.update(resampling_fn_data="resample_torch_fornnunet"),
     "resampling_fn_data resample_torch_fornnunet"),
    (lambda c: c["architecture"].update(network_class_name="os.system"), "network os.system"),
    (lambda c: c["architecture"]["arch_kwargs"].update(conv_op="builtins.eval"),
     "names the layer 'builtins.eval'"),
])
def test_plan_fields_medseg_does_not_reproduce_are_named(tmp_path, change, message):
    from medseg.models.nnunet.predictor import NNUNetPredictor

    with pytest.raises(MedsegError, match=message):
        NNUNetPredictor(_copy_with_plans(tmp_path, change))


def test_weights_of_another_network_name_the_trainer(tmp_path):
    from medseg.models.nnunet.predictor import NNUNetPredictor

    model = _copy_with_plans(tmp_path, lambda c: c["architecture"]["arch_kwargs"].update(
        features_per_stage=[16, 32, 64, 128]))
    with pytest.raises(MedsegError, match="trainer nnUNetTrainer builds another network"):
        NNUNetPredictor(model)


class _Threshold:
    """A stand-in part: labels voxels above 0 HU as its class 1, on whatever grid it is given."""

    labels = {0: "background", 1: "liver"}

    def predict(self, scan):
        return (scan[0].numpy() > 0).astype(np.uint8), None


@pytest.mark.parametrize("code", ["LPS", "RAS", "PIL"])
def test_totalsegmentator_path_undoes_its_reorientation_exactly(code):
    """At the task's own spacing only the canonical reorientation acts, so thresholding on
    TotalSegmentator's working grid must give back exactly the threshold on the scan's grid."""
    from medseg.data.io import scan_from_array
    from medseg.data.phantoms import _reorient
    from medseg.models.totalseg import Task, TotalSegmentatorPredictor

    rng = np.random.default_rng(4)
    image = rng.integers(-20, 20, size=(9, 7, 5)).astype(np.float32) * 10 + 5
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    stored, stored_affine = _reorient(image, affine, code)
    predictor = TotalSegmentatorPredictor.__new__(TotalSegmentatorPredictor)
    predictor.task, predictor.options = Task((1,), 1.5, ""), EngineOptions()
    predictor.parts = [(_Threshold(), np.array([0, 5], dtype=np.uint8))]
    mask, _ = predictor.predict(scan_from_array(stored, stored_affine))
    # No voxel lies within 5 HU of the threshold: resampling at factor 1 and truncation
    # to integers cannot move one across it.
    np.testing.assert_array_equal(mask, np.where(stored > 0, 5, 0))


def _tampered(tmp_path, change) -> Path:
    """The test model with its whole plans.json changed by `change(plans, configuration)`."""
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    plans = json.loads((model / "plans.json").read_text())
    change(plans, plans["configurations"]["3d_fullres"])
    (model / "plans.json").write_text(json.dumps(plans))
    return model


TAMPERED = {
    "zero spacing": (lambda p, c: c.update(spacing=[0, 2.0, 2.0]), r"spacing \[0, 2.0, 2.0\]"),
    "negative patch": (lambda p, c: c.update(patch_size=[32, -96, 96]), "patch_size"),
    "absurd patch": (lambda p, c: c.update(patch_size=[10**6, 96, 96]), "patch_size"),
    "stage count": (lambda p, c: c["architecture"]["arch_kwargs"].update(n_stages="four"),
                    "cannot build a PlainConvUNet"),
    "intensity": (lambda p, c: p.pop("foreground_intensity_properties_per_channel"),
                  "foreground_intensity_properties_per_channel"),
    "axes": (lambda p, c: p.update(transpose_forward=[0, 0, 1]), "transpose_forward"),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_tampered_plan_is_one_line_naming_plans_json(tmp_path, name):
    change, message = TAMPERED[name]
    model = _tampered(tmp_path, change)
    with pytest.raises(MedsegError, match=message) as raised:
        read_model_folder(model).build_network()
    assert str(raised.value).startswith(f"{model / 'plans.json'}: ")


def test_fine_tuning_from_a_tampered_plan_names_the_plans_file(tmp_path, tiny_dataset):
    from conftest import run_cli_here

    model = _tampered(tmp_path, TAMPERED["zero spacing"][0])
    proc = run_cli_here("train", "--manifest", tiny_dataset, "--output", tmp_path / "run",
                        "--init-from", model, "--epochs", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{model / 'plans.json'}: spacing" in proc.stderr
    assert not (tmp_path / "run").exists()
