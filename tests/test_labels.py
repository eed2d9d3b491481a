"""Organ names: aliases, the shipped label maps, and pairing two maps by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.data.labels import (
    LABEL_MAP_DIR,
    SHIPPED_MAPS,
    canonical_name,
    load_label_map,
    match_label_maps,
    totalsegmentator_map,
)
from medseg.data.manifest import load_manifest
from medseg.errors import MedsegError


@pytest.mark.parametrize("spelling, name", [
    ("kidney_right", "right_kidney"), ("Right kidney", "right_kidney"), ("rkid", "right_kidney"),
    ("Inferior Vena Cava", "inferior_vena_cava"), ("postcava", "inferior_vena_cava"),
    ("portal_vein_and_splenic_vein", "portal_and_splenic_veins"),
    ("adrenal_gland_left", "left_adrenal_gland"), ("gall bladder", "gallbladder"),
    ("prostate/uterus", "prostate_or_uterus"), ("vertebrae_L1", "vertebrae_l1"),
    ("liver", "liver"),
])
def test_public_spellings_map_to_one_canonical_name(spelling, name):
    assert canonical_name(spelling) == name


# Transcribed from the data sets' papers (see /work/shared/REFERENCE.md), not from our JSON.
PUBLIC_IDS = {
    "btcv": ["spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver",
             "stomach", "aorta", "inferior_vena_cava", "portal_and_splenic_veins", "pancreas",
             "right_adrenal_gland", "left_adrenal_gland"],
    "amos": ["spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver",
             "stomach", "aorta", "inferior_vena_cava", "pancreas", "right_adrenal_gland",
             "left_adrenal_gland", "duodenum", "urinary_bladder", "prostate_or_uterus"],
    "flare22": ["liver", "right_kidney", "spleen", "pancreas", "aorta", "inferior_vena_cava",
                "right_adrenal_gland", "left_adrenal_gland", "gallbladder", "esophagus",
                "stomach", "duodenum", "left_kidney"],
}


@pytest.mark.parametrize("name", sorted(PUBLIC_IDS))
def test_shipped_maps_have_the_published_ids(name):
    expected = {0: "background", **{i + 1: o for i, o in enumerate(PUBLIC_IDS[name])}}
    assert load_label_map(name) == expected


def test_every_shipped_map_uses_canonical_names_only():
    for name in SHIPPED_MAPS:
        raw = json.loads((LABEL_MAP_DIR / f"{name}.json").read_text())["labels"]
        assert all(canonical_name(v) == v for v in raw.values()), name


def test_totalsegmentator_map_is_built_from_its_own_class_map(real_data):
    classmap = real_data / "petct_dicom" / "totalseg_classmap_total_v2.json"
    shipped = json.loads((LABEL_MAP_DIR / "totalseg_v2.json").read_text())
    assert shipped == totalsegmentator_map(classmap)
    source = json.loads(classmap.read_text())
    labels = load_label_map("totalseg_v2")
    assert sorted(labels) == list(range(118))  # 117 structures and background
    assert [labels[int(i)] for i in ("2", "8", "63", "64")] == [
        "right_kidney", "right_adrenal_gland", "inferior_vena_cava", "portal_and_splenic_veins"]
    assert all(labels[int(i)] == canonical_name(n) for i, n in source.items())


def test_maps_are_paired_by_name_not_by_id():
    match = match_label_maps(load_label_map("totalseg_v2"), load_label_map("btcv"))
    pairs = {name: (r, p) for name, r, p in match.organs}
    assert len(pairs) == 13  # every BTCV organ has a TotalSegmentator counterpart
    assert pairs["liver"] == (5, 6) and pairs["right_kidney"] == (2, 2)
    assert pairs["portal_and_splenic_veins"] == (64, 10) and pairs["esophagus"] == (15, 5)
    assert {"duodenum", "colon", "vertebrae_l1"} <= set(match.reference_only)
    assert match.prediction_only == []
    flare = match_label_maps(load_label_map("amos"), load_label_map("flare22"))
    assert flare.reference_only == ["urinary_bladder", "prostate_or_uterus"]
    assert dict((n, (r, p)) for n, r, p in flare.organs)["left_kidney"] == (3, 13)


def test_evaluation_maps_may_have_gaps_but_training_manifests_may_not(tmp_path):
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps({"labels": {"1": "Spleen", "6": "Liver"}}))
    assert load_label_map(subset) == {0: "background", 1: "Spleen", 6: "Liver"}  # as spelt
    manifest = tmp_path / "dataset.json"
    manifest.write_text(json.dumps({"labels": {"1": "spleen", "6": "liver"},
                                    "training": [{"image": "a", "label": "b"}]}))
    with pytest.raises(MedsegError, match="without gaps"):
        load_manifest(manifest)


def test_ambiguous_or_unknown_label_maps_are_clear_errors(tmp_path):
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"kidney_right": 1, "Right Kidney": 2}))
    with pytest.raises(MedsegError, match="ids 1 and 2 both name 'right_kidney'"):
        load_label_map(twice)
    with pytest.raises(MedsegError, match="shipped maps are synthetic, btcv"):
        load_label_map("btvc")
    with pytest.raises(MedsegError, match="share no organ name"):
        match_label_maps({1: "liver"}, {1: "heart"})


def test_remap_by_name_moves_ids_between_maps_and_drops_organs_the_target_lacks():
    from medseg.data.labels import remap_by_name

    totalseg = {1: "spleen", 2: "kidney_right", 5: "liver", 52: "aorta", 90: "brain"}
    ours = {0: "background", 1: "liver", 2: "spleen", 3: "right_kidney", 4: "aorta"}
    mask = np.array([[0, 1, 2], [5, 52, 90]], dtype=np.uint8)
    assert remap_by_name(mask, totalseg, ours).tolist() == [[0, 2, 3], [1, 4, 0]]
