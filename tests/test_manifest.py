"""Decathlon manifests and label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_nifti

from medseg.data.labels import load_labels, parse_labels
from medseg.data.manifest import check_case_files, load_manifest
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


# --- nnU-Net v2 raw data sets, read as they are -----------------------------------------------

def nnunet_raw(folder, source, ending=".nii.gz", **overrides):
    """An nnU-Net v2 raw data set (imagesTr/CASE_0000, labelsTr/CASE, its dataset.json) laid
    out from a Decathlon one's files; returns its dataset.json."""
    import shutil

    from medseg.data.phantoms import SYNTHETIC_LABELS

    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    entries = json.loads(source.read_text())["training"]
    for entry in entries:
        case = entry["image"].split("/")[-1].removesuffix(".nii.gz")
        shutil.copy(source.parent / entry["image"], folder / "imagesTr" / f"{case}_0000{ending}")
        shutil.copy(source.parent / entry["label"], folder / "labelsTr" / f"{case}{ending}")
    dataset = {"channel_names": {"0": "CT"},
               "labels": {name: i for i, name in SYNTHETIC_LABELS.items()},
               "numTraining": len(entries), "file_ending": ending, **overrides}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder / "dataset.json"


def test_an_nnunet_raw_folder_is_read_as_it_is(tiny_dataset, tmp_path):
    manifest = nnunet_raw(tmp_path / "Dataset001_Phantoms", tiny_dataset)
    cases, labels = load_manifest(manifest)
    ours, _ = load_manifest(tiny_dataset)
    assert labels == load_labels(tiny_dataset)
    assert [c["image"].split("/")[-1] for c in cases] == [
        c["image"].split("/")[-1].replace(".nii.gz", "_0000.nii.gz") for c in ours]
    assert all(c["label"].endswith(c["image"].split("/")[-1].replace("_0000", ""))
               for c in cases)


@pytest.mark.parametrize("change, message", [
    ({"channel_names": {"0": "T1", "1": "T2"}}, "has 2 input channels (T1, T2); medseg trains"),
    ({"labels": {"background": 0, "organ": [1, 2]}}, "a region-based nnU-Net data set"),
    ({"numTraining": 7}, "numTraining is 7, but labelsTr holds 3 cases"),
    ({"file_ending": ".png"}, "file_ending '.png' is not a format medseg reads"),
])
def test_nnunet_raw_folders_medseg_cannot_train_on_are_one_line(tiny_dataset, tmp_path, change,
                                                                message):
    manifest = nnunet_raw(tmp_path / "raw", tiny_dataset, **change)
    with pytest.raises(MedsegError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(manifest)


def test_an_nnunet_label_without_its_image_names_the_case(tiny_dataset, tmp_path):
    manifest = nnunet_raw(tmp_path / "raw", tiny_dataset)
    (tmp_path / "raw" / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(MedsegError, match=r"case_001.nii.gz: no image imagesTr/case_001_0000"):
        load_manifest(manifest)


def test_train_and_plan_take_an_nnunet_raw_folder(tiny_dataset, tmp_path):
    from conftest import TINY_TRAIN_ARGS, run_cli_here

    manifest = nnunet_raw(tmp_path / "Dataset001_Phantoms", tiny_dataset)
    proc = run_cli_here("plan", "--manifest", manifest, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli_here("train", "--manifest", manifest, "--output", tmp_path / "run",
                        *TINY_TRAIN_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["labels"]["5"] == "liver"
