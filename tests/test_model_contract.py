"""The Predictor contract (medseg.models.contract), run over every kind of model open_model
opens, as tests/test_models.py runs the network contract over every network; and the steps
the pipeline takes for every kind (ROI subset, clean-up, model id), checked by hand."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import NNUNET_MODEL, write_bundle, write_totalseg_home

from medseg.data.io import scan_from_array
from medseg.data.phantoms import make_phantom
from medseg.inference.options import InferOptions, RunOptions
from medseg.inference.pipeline import Pipeline, open_pipeline
from medseg.models.contract import MODEL_ID_PREFIX, Predictor
from medseg.models.open import KINDS, model_kind, open_model
from medseg.models.options import EngineOptions

TOTALSEG_PART = {297: ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver",
                       "stomach", "aorta", "inferior_vena_cava", "pancreas"]}


@pytest.fixture(scope="module")
def references(tiny_run, tmp_path_factory, monkeypatch_module) -> dict[str, object]:
    """One model of every kind in KINDS, laid out as its tool writes it."""
    root = tmp_path_factory.mktemp("kinds")
    crossval = root / "cv"  # what `medseg crossval` leaves: folds' last.pt + its choice
    for fold, source in enumerate(("best.pt", "last.pt")):
        (crossval / f"fold_{fold}").mkdir(parents=True)
        shutil.copy(tiny_run / source, crossval / f"fold_{fold}" / "last.pt")
    (crossval / "crossval.json").write_text(json.dumps({"folds": 2}))
    (crossval / "postprocessing.json").write_text(json.dumps(
        {"organs": {"liver": {"keep_largest": True}, "spleen": {"min_volume_mm3": 500.0}}}))
    home = write_totalseg_home(root / "ts", TOTALSEG_PART)
    monkeypatch_module.setenv("TOTALSEG_HOME_DIR", str(home))
    return {"medseg": tiny_run, "crossval": crossval, "nnunet": NNUNET_MODEL,
            "bundle": write_bundle(root / "bundle"),
            "totalsegmentator": "totalsegmentator:total_fast"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    patcher = pytest.MonkeyPatch()
    yield patcher
    patcher.undo()


@pytest.fixture(scope="module")
def scan():
    """The middle of a phantom stored LPS at coarse spacing: a grid no model works on."""
    phantom = make_phantom(3, spacing=(6.0, 6.0, 8.0), orientation="LPS")
    corner = np.array(phantom.image.shape) // 4 * [1, 1, 0]
    affine = phantom.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ corner
    x, y, _ = corner
    return scan_from_array(phantom.image[x:-x, y:-y], affine)


def test_every_kind_is_covered(references):
    assert set(references) == set(KINDS)
    assert {kind: model_kind(ref) for kind, ref in references.items()} == {k: k for k in KINDS}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_offers_the_predictor_contract(kind, references, scan):
    options = EngineOptions(device="cpu", save_probabilities=kind != "totalsegmentator")
    predictor = open_model(references[kind], options)
    assert isinstance(predictor, Predictor)
    assert predictor.options is options
    labels = predictor.labels
    assert labels[0] == "background" and all(isinstance(i, int) and i >= 0 for i in labels)
    assert all(isinstance(name, str) and name for name in labels.values())
    assert isinstance(predictor.model_id, str) and predictor.model_id
    assert not predictor.model_id.startswith(MODEL_ID_PREFIX)  # the pipeline adds it
    assert predictor.model_id == open_model(references[kind], options).model_id  # same files
    assert len(predictor.spacing) == 3 and all(math.isfinite(s) and s > 0
                                               for s in predictor.spacing)
    assert predictor.spatial_dims in (2, 3)
    assert set(predictor.cleanup) <= set(labels)
    assert all(isinstance(largest, bool) and volume >= 0
               for largest, volume in predictor.cleanup.values())

    mask, probabilities = predictor.predict(scan)
    assert mask.dtype == np.uint8 and mask.shape == tuple(scan.shape[1:])
    assert set(np.unique(mask)) <= set(labels)
    if kind == "totalsegmentator":  # its merged parts have no class probabilities
        assert probabilities is None
    else:
        assert probabilities.dtype == np.uint8
        assert probabilities.shape == (len(labels), *scan.shape[1:])
        np.testing.assert_allclose(probabilities.sum(0, dtype=float), 255, atol=len(labels))


def test_the_model_ids_of_different_kinds_differ_and_fit_the_mask_header(references):
    ids = {kind: open_pipeline(ref, InferOptions(EngineOptions(device="cpu"),
                                                 RunOptions(roi_subset="liver"))).model_id
           for kind, ref in references.items()}
    assert len(set(ids.values())) == len(ids)
    assert all(i.startswith(MODEL_ID_PREFIX) and len(i.encode()) <= 80 for i in ids.values())


def test_a_crossval_folder_brings_its_own_clean_up(references):
    predictor = open_model(references["crossval"], EngineOptions(device="cpu"))
    ids = {name: i for i, name in predictor.labels.items()}
    assert predictor.cleanup == {ids["liver"]: (True, 0.0), ids["spleen"]: (False, 500.0)}


class Painted:
    """A stand-in model that offers the contract and paints a known mask: organ 1 in two
    blobs (8 and 1 voxels), organ 2 in one blob of 4, organ 3 in two blobs (2 and 2)."""

    labels = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_right"}
    model_id = "painted 0001"
    spacing = (1.0, 1.0, 1.0)
    spatial_dims = 3
    options = EngineOptions()

    def __init__(self, cleanup=None):
        self.cleanup = cleanup or {}

    def predict(self, scan):
        mask = np.zeros(scan.shape[1:], dtype=np.uint8)
        mask[0:2, 0:2, 0:2] = 1
        mask[6, 6, 6] = 1
        mask[0:2, 5:7, 0] = 2
        mask[4, 0, 0:2] = 3
        mask[4, 9, 0:2] = 3
        return mask, None


def _segment(pipeline: Pipeline) -> np.ndarray:
    noise = np.random.default_rng(0).normal(40, 100, (8, 10, 8)).astype(np.float32)
    scan = scan_from_array(noise, np.eye(4))
    return pipeline.segment(scan, Path("s.nii.gz"))[0]


def test_the_pipeline_keeps_the_roi_subset_cleans_and_names_the_model():
    plain = Pipeline(Painted())
    assert plain.model_id == MODEL_ID_PREFIX + "painted 0001"
    counts = np.bincount(_segment(plain).ravel(), minlength=4)
    assert counts.tolist()[1:] == [9, 4, 4]  # nothing asked: the mask as the model painted it
    subset = Pipeline(Painted(), RunOptions(roi_subset="Liver, right_kidney"))
    assert subset.labels == {0: "background", 1: "liver", 3: "kidney_right"}
    assert subset.model_id.startswith(plain.model_id + " roi ")
    assert np.bincount(_segment(subset).ravel(), minlength=4).tolist()[1:] == [9, 0, 4]
    largest = Pipeline(Painted(), RunOptions(keep_largest=True))
    # Organ 3's blobs tie at 2 voxels: keep-largest keeps the first (scipy's argmax).
    assert np.bincount(_segment(largest).ravel(), minlength=4).tolist()[1:] == [8, 4, 2]
    # The model's own rule (organ 1: drop under 3 mm3) on top of a global one (under 2 mm3).
    own = Pipeline(Painted(cleanup={1: (False, 3.0)}), RunOptions(min_volume_mm3=2.0))
    assert np.bincount(_segment(own).ravel(), minlength=4).tolist()[1:] == [8, 4, 4]


def test_what_does_not_offer_the_contract_is_refused():
    class NoLabels:
        def predict(self, scan):
            return None, None

    with pytest.raises(TypeError, match="NoLabels does not offer the Predictor contract"):
        Pipeline(NoLabels())


def test_engine_and_run_options_are_checked_for_the_api_as_for_the_command_line():
    from medseg.errors import MedsegError

    for bad in ({"overlap": float("nan")}, {"overlap": 1.5}, {"sw_batch_size": 0},
                {"min_volume_mm3": float("inf")}, {"tta": "yes"}, {"crf_iterations": -3},
                {"precision": "fp8"}, {"device": "gpu"}, {"roi_subset": " , "}):
        with pytest.raises(MedsegError):
            InferOptions.from_keywords(**bad)
    with pytest.raises(MedsegError, match="unknown option overlapp; valid: device, overlap"):
        InferOptions.from_keywords(overlapp=0.3)
    given = InferOptions.from_keywords(overlap=0.25, keep_largest=True)
    assert given.engine.overlap == 0.25 and given.run.keep_largest
