"""Decathlon manifests and label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_nifti

from medseg.data.manifest import check_case_files, load_labels, load_manifest, parse_labels
from medseg.errors import MedsegError


def test_label_maps_in_both_directions_agree():
    assert parse_labels({"0": "background", "1": "liver"}, "x") == {0: "background", 1: "liver"}
    assert parse_labels({"background": 0, "liver": 1}, "x") == {0: "background", 1: "liver"}
    assert parse_labels({"liver": 1}, "x") == {0: "background", 1: "liver"}


def test_label_maps_with_gaps_or_names_without_ids_are_refused():
    with pytest.raises(MedsegError, match="without gaps"):
        parse_labels({"1": "spleen", "6": "liver"}, "x")
    with pytest.raises(MedsegError, match="no integer id"):
        parse_labels({"liver": "big"}, "x")


def test_manifest_paths_resolve_relative_to_the_json(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "dataset.json"
    manifest.write_text(json.dumps({"labels": {"0": "background", "1": "liver"},
                                    "training": [{"image": "./img/a.nii.gz",
                                                  "label": "./lab/a.nii.gz", "fold": 2}]}))
    cases, labels = load_manifest(manifest)
    assert cases[0]["image"] == str(tmp_path / "sub" / "img" / "a.nii.gz")
    assert cases[0]["fold"] == 2  # extra keys are kept
    assert labels == {0: "background", 1: "liver"}
    assert load_labels(manifest) == labels


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"labels": {"1": "liver"}}), "missing key 'training'"),
    (json.dumps({"labels": {"1": "liver"}, "training": []}), "is empty"),
    (json.dumps({"labels": {"1": "liver"}, "training": [{"image": "a"}]}), "needs 'image'"),
])
def test_broken_manifests_are_clear_errors(tmp_path, content, message):
    manifest = tmp_path / "dataset.json"
    manifest.write_text(content)
    with pytest.raises(MedsegError, match=message):
        load_manifest(manifest)


def test_image_label_mismatches_name_the_case(tmp_path):
    image = write_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.int16))
    small = write_nifti(tmp_path / "small.nii.gz", np.zeros((4, 5, 5), np.uint8))
    shifted = write_nifti(tmp_path / "shifted.nii.gz", np.zeros((4, 5, 6), np.uint8),
                          np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(MedsegError, match="small.nii.gz: label shape"):
        check_case_files({"image": str(image), "label": str(small)})
    with pytest.raises(MedsegError, match="affine differs"):
        check_case_files({"image": str(image), "label": str(shifted)})
    with pytest.raises(MedsegError, match="label file not found"):
        check_case_files({"image": str(image), "label": str(tmp_path / "none.nii.gz")})


def test_shipped_synthetic_label_map_matches_the_phantoms():
    from pathlib import Path

    from medseg.data.phantoms import SYNTHETIC_LABELS

    shipped = Path(__file__).resolve().parents[1] / "data_manifests" / "label_maps"
    assert load_labels(shipped / "synthetic.json") == SYNTHETIC_LABELS
    assert load_labels(shipped / "btcv.json")[6] == "liver"
