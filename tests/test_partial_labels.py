"""Partial labels: data sets labelling different organs combined by name, and a loss that does
not count a case's unlabelled organs as background (values worked out by hand)."""

from __future__ import annotations

import json
import logging
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_ARGS, convert_3slice, run_cli_here

from medseg.data.manifest import load_manifest
from medseg.errors import MedsegError
from medseg.training.losses import build_loss, merge_unannotated

# One voxel per case, three classes with probabilities 1/6, 2/6, 3/6 (logits ln 1, ln 2, ln 3).
LOGITS = torch.log(torch.tensor([1.0, 2.0, 3.0])).reshape(1, 3, 1, 1).repeat(2, 1, 1, 1)
# Case 0 annotates every class; case 1's data set does not label class 2.
ANNOTATED = torch.tensor([[True, True, True], [True, True, False]])


def test_unlabelled_classes_count_as_background_in_cross_entropy():
    background = torch.zeros(2, 1, 1, 1, dtype=torch.long)
    merged = merge_unannotated(LOGITS, ANNOTATED)
    torch.testing.assert_close(merged.softmax(1).flatten(1),
                               torch.tensor([[1 / 6, 2 / 6, 3 / 6], [4 / 6, 2 / 6, 0.0]]))
    # -log p(background): case 1's background may be class 2, so it is 1/6 + 3/6.
    expected = (-math.log(1 / 6) - math.log(4 / 6)) / 2
    assert build_loss("ce")(merged, background).item() == pytest.approx(expected, abs=1e-6)
    # Without the merge the second case would be told class 2 is wrong there.
    assert build_loss("ce")(LOGITS, background).item() == pytest.approx(-math.log(1 / 6), 1e-6)


def test_dice_of_an_unlabelled_class_sees_only_the_cases_that_label_it():
    label = torch.tensor([2, 0]).reshape(2, 1, 1, 1)  # case 0: class 2; case 1: unlabelled
    dice = build_loss("dice")
    # Batch Dice over both cases, background excluded. Class 1: no voxel, predicted 1/3 twice:
    # loss 1. Class 2 over case 0 only: 1 - 2 * 0.5 / (1 + 0.5) = 1/3.
    assert dice(merge_unannotated(LOGITS, ANNOTATED), label).item() == pytest.approx(
        (1 + 1 / 3) / 2, abs=1e-4)
    # Counted as background in case 1, its 0.5 there enters class 2: 1 - 1 / (1 + 1) = 1/2.
    assert dice(LOGITS, label).item() == pytest.approx((1 + 1 / 2) / 2, abs=1e-4)


def test_fully_labelled_batches_and_deep_supervision_levels():
    everything = torch.ones(2, 3, dtype=torch.bool)
    assert merge_unannotated(LOGITS, everything) is LOGITS
    half = LOGITS[..., :1, :1]
    merged = merge_unannotated([LOGITS, half], ANNOTATED)
    assert len(merged) == 2 and merged[1].shape == half.shape
    assert merged[1][1, 2].item() == -math.inf


def write_dataset(folder, labels: dict, cases: dict[str, np.ndarray], layout="decathlon"):
    """A tiny data set of 8^3 scans with the given masks; returns its dataset.json."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    entries = []
    for name, mask in cases.items():
        image = np.full(mask.shape, -1000, np.int16) + 50 * mask.astype(np.int16)
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / "imagesTr" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(folder / "labelsTr" / f"{name}.nii.gz"))
        entries.append({"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "training": entries}))
    return folder / "dataset.json"


def mask_of(*ids) -> np.ndarray:
    mask = np.zeros((8, 8, 8), np.uint8)
    for slot, label_id in enumerate(ids):
        mask[slot * 2:slot * 2 + 2] = label_id
    return mask


@pytest.fixture
def two_datasets(tmp_path):
    """BTCV-like ids in one (liver 6 of 'spleen, ..., liver'), a liver-and-stomach set with
    its own ids and spelling in the other."""
    write_dataset(tmp_path / "a", {"0": "background", "1": "spleen", "2": "Liver"},
                  {"a0": mask_of(1, 2)})
    write_dataset(tmp_path / "b", {"background": 0, "stomach": 1, "liver": 2, "gall": 3},
                  {"b0": mask_of(1, 2, 3)})
    combined = tmp_path / "combined.json"
    combined.write_text(json.dumps({"datasets": ["a/dataset.json", "b/dataset.json"]}))
    return combined


def test_data_sets_combine_by_organ_name(two_datasets):
    cases, labels = load_manifest(two_datasets)
    assert labels == {0: "background", 1: "spleen", 2: "Liver", 3: "stomach", 4: "gall"}
    a, b = cases
    assert (a["combined_ids"], a["annotated"]) == ([0, 1, 2], [0, 1, 2])
    assert (b["combined_ids"], b["annotated"]) == ([0, 3, 2, 4], [0, 2, 3, 4])
    assert b["dataset"].endswith("b/dataset.json")


def test_a_given_combined_map_decides_ids_and_drops_organs_it_lacks(two_datasets, caplog):
    data = json.loads(two_datasets.read_text())
    data["labels"] = {"0": "background", "1": "liver", "2": "gallbladder", "3": "spleen"}
    two_datasets.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="medseg"):
        cases, labels = load_manifest(two_datasets)
    assert labels[2] == "gallbladder"
    assert cases[1]["combined_ids"] == [0, 0, 1, 2]  # stomach: not in the map, background
    assert "stomach not in the combined label map" in caplog.text


def test_the_label_goes_onto_the_combined_map_with_its_annotated_classes(two_datasets):
    from medseg.data.transforms import DataSetLabelsd, LoadScand

    cases, labels = load_manifest(two_datasets)
    item = DataSetLabelsd("label", len(labels))(LoadScand(("image", "label"))(cases[1]))
    # By hand: b's stomach 1 -> 3, liver 2 -> 2, gall 3 -> 4.
    np.testing.assert_array_equal(item["label"][0].numpy(), mask_of(3, 2, 4))
    assert item["annotated"].tolist() == [True, False, True, True, True]
    assert "combined_ids" not in item


@pytest.mark.parametrize("mutation, message", [
    ({"datasets": "a/dataset.json"}, "'datasets' must be a list of data set files"),
    ({"datasets": ["a/dataset.json", "combined.json"]}, "combines data sets itself"),
    ({"datasets": ["a/dataset.json", "./a/dataset.json"]}, "'./a/dataset.json' is listed twice"),
    ({"datasets": ["a/dataset.json", "c/dataset.json"]}, "a0.nii.gz is a case of both"),
    ({"datasets": ["a/dataset.json", "missing/dataset.json"]}, "no such JSON file"),
])
def test_bad_combinations_are_one_line(two_datasets, mutation, message):
    (two_datasets.parent / "c").mkdir()  # a data set holding a's case as well
    (two_datasets.parent / "c" / "dataset.json").write_text(json.dumps({
        "labels": {"1": "spleen"}, "root": "..",
        "training": [{"image": "a/imagesTr/a0.nii.gz", "label": "a/labelsTr/a0.nii.gz"}]}))
    two_datasets.write_text(json.dumps(mutation))
    with pytest.raises(MedsegError, match=message):
        load_manifest(two_datasets)


def test_one_name_for_different_organs_is_refused(tmp_path):
    """One data set calls both kidneys 'kidney', the other labels them apart."""
    write_dataset(tmp_path / "a", {"1": "kidney"}, {"a0": mask_of(1)})
    write_dataset(tmp_path / "b", {"1": "kidney_left", "2": "Right Kidney"},
                  {"b0": mask_of(1, 2)})
    combined = tmp_path / "combined.json"
    combined.write_text(json.dumps({"datasets": ["a/dataset.json", "b/dataset.json"]}))
    proc = run_cli_here("plan", "--manifest", combined)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'a' / 'dataset.json'}: its 'kidney' covers both sides, while "
        f"{tmp_path / 'b' / 'dataset.json'} labels left_kidney and right_kidney apart: one "
        "name, different organs; split the first data set's 'kidney' into sides or merge the "
        "other's, then combine them")


def test_a_label_id_missing_from_its_data_sets_map_names_the_case(two_datasets, tmp_path):
    nib.save(nib.Nifti1Image(mask_of(1, 5), np.eye(4)),
             str(tmp_path / "b" / "labelsTr" / "b0.nii.gz"))
    proc = run_cli_here("train", "--manifest", two_datasets, "--output", tmp_path / "run",
                        *TINY_TRAIN_ARGS)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: {tmp_path / 'b' / 'labelsTr' / 'b0.nii.gz'}: label values [5] are "
                    f"not in its data set's map ({tmp_path / 'b' / 'dataset.json'}: ids 0..3); "
                    "fix the label or that map")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_phantom_halves_train_as_one_data_set(tiny_dataset, tmp_path):
    """A synthetic set split into two partially labelled data sets trains end to end; its
    batches carry each case's annotated classes, and its cached labels are the full labels
    with the other data set's organs removed."""
    from medseg.data.phantoms import SYNTHETIC_LABELS
    from medseg.data.synth import write_partially_labelled
    from medseg.training.cases import make_loader, network_input
    from medseg.training.config import TrainConfig

    organ_sets = [["liver", "spleen"], ["stomach", "liver", "pancreas"]]
    combined = write_partially_labelled(tiny_dataset, tmp_path / "partial", organ_sets)
    cases, labels = load_manifest(combined)
    assert list(labels.values()) == ["background", "liver", "spleen", "stomach", "pancreas"]
    full_cases, _ = load_manifest(tiny_dataset)
    by_name = {n: i for i, n in SYNTHETIC_LABELS.items()}
    for case in cases:
        organs = organ_sets[0 if "part0" in case["dataset"] else 1]
        own = nib.load(case["label"]).get_fdata().astype(int)
        full = nib.load(full_cases[[c["image"] for c in full_cases].index(case["image"])]
                        ["label"]).get_fdata().astype(int)
        for own_id, organ in enumerate(organs, start=1):
            np.testing.assert_array_equal(own == own_id, full == by_name[organ])
        assert (own > 0).sum() == np.isin(full, [by_name[o] for o in organs]).sum()

    from medseg.data.transforms import training_cache_transforms

    cfg = TrainConfig(manifest=str(combined), output=str(tmp_path / "run"), spacing=(8, 8, 8),
                      patch_size=(32, 32, 16), batch_size=3, iters_per_epoch=1,
                      intensity={"clip": [-1000, 500], "mean": 0.0, "std": 300.0})
    spec = network_input(cfg)
    items = [training_cache_transforms(spec, len(labels))(case) for case in cases]
    batch = next(iter(make_loader(items, cfg, spec, len(labels))))
    flags = {(True, True, True, False, False), (True, True, False, True, True)}
    assert {tuple(row) for row in batch["annotated"].tolist()} <= flags
    proc = run_cli_here("train", "--manifest", combined, "--output", tmp_path / "run",
                        *TINY_TRAIN_ARGS)
    assert proc.returncode == 0, proc.stderr
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert header.split(",")[3:7] == ["liver", "spleen", "stomach", "pancreas"]


def test_real_scans_with_different_label_maps_combine(real_case, real_data, tmp_path):
    """The real 20-slice series (TotalSegmentator's organs) and the real 3-slice series (liver,
    spine and heart drawn by people, converted from NRRD) combined: liver is one class."""
    from medseg.data.transforms import DataSetLabelsd, LoadScand

    raw = convert_3slice(real_data, tmp_path)
    combined = tmp_path / "combined.json"
    combined.write_text(json.dumps({"datasets": [str(real_case), str(raw / "dataset.json")]}))
    cases, labels = load_manifest(combined)
    assert list(labels.values()) == ["background", "liver", "spleen", "right_kidney",
                                     "left_kidney", "stomach", "aorta", "heart", "spine"]
    thorax = cases[1]
    item = DataSetLabelsd("label", len(labels))(LoadScand(("image", "label"))(thorax))
    own = nib.load(thorax["label"]).get_fdata().astype(int)  # heart 1, liver 2, spine 3
    by_hand = np.array([0, 7, 1, 8])[own]
    np.testing.assert_array_equal(item["label"][0].numpy(), by_hand)
    assert np.flatnonzero(item["annotated"].numpy()).tolist() == [0, 1, 7, 8]
    proc = run_cli_here("train", "--manifest", combined, "--output", tmp_path / "run",
                        *TINY_TRAIN_ARGS)
    assert proc.returncode == 0, proc.stderr
