"""The failure catalogue of docs/errors.md: every bad input gets one clear answer, nothing is lost.

One test per row (or one table of rows). Most call the functions directly; a handful run the
command line as a user would, for the exit code, the single `error:` line, no traceback and no
output left behind. Rows that other test files already cover are referenced in docs/errors.md.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import (
    LABELS,
    SHAPE,
    TINY_TRAIN_ARGS,
    assert_clean_failure,
    ct,
    tiny_checkpoint,
    write_dicom_series,
    write_nifti,
)
from conftest import run_cli_here as run_cli

from cli import main
from medseg.data.files import check_writable
from medseg.data.io import list_scans, load_scan
from medseg.data.manifest import load_manifest
from medseg.data.transforms import LoadScand
from medseg.errors import MedsegError, OutputError
from medseg.evaluation.evaluate import load_label_volume
from medseg.inference.batch import infer_cases
from medseg.inference.memory import check_inference_memory, inference_bytes
from medseg.inference.options import InferOptions
from medseg.inference.pipeline import Pipeline
from medseg.models.open import open_model
from medseg.models.options import EngineOptions
from medseg.nets.checkpoint import load_checkpoint, save_checkpoint
from medseg.nets.registry import build_network
from medseg.training.planning import ct_normalization, make_plan
from medseg.training.run_folder import resume_from
from medseg.version import __version__


def nifti_with_affine(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI whose sform (and pixdim) say what is given, even where nibabel could not
    decompose it into a qform. pixdim agrees with it, as in a real broken header: otherwise
    MONAI's reader would swap in the qform."""
    header = nib.Nifti1Header()
    header["sform_code"], header["qform_code"] = 1, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    header["pixdim"][1:4] = np.linalg.norm(affine[:3, :3], axis=0)
    nib.save(nib.Nifti1Image(array, None, header=header), str(path))
    return path


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# ---------------------------------------------------------------------------------- inputs


def test_a_file_that_is_no_scan_is_refused_before_loading(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("patient list")
    one_slice = tmp_path / "IM0001"  # DICOM files often have no suffix; the preamble tells
    one_slice.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    for load in (list_scans, load_scan):
        with pytest.raises(MedsegError, match=r"notes\.txt: not a scan format medseg reads .*"
                                              "convert it"):
            load(notes)
        with pytest.raises(MedsegError, match="IM0001: a single DICOM slice; pass the folder"):
            load(one_slice)


def test_cli_refuses_a_non_image_input_with_exit_code_2(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("patient list")
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", notes,
                   "--output", tmp_path / "out")
    assert_clean_failure(proc, "notes.txt", "not a scan format")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_truncated_nifti_names_the_file_and_says_what_to_do(tmp_path, suffix):
    whole = write_nifti(tmp_path / f"whole{suffix}", ct((40, 40, 30)))
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsegError, match=r"cut\.nii(\.gz)?: cannot read image \(.+\); the file "
                                          "is damaged or not a scan: export it again"):
        load_scan(cut)


UIDS = [f"1.2.826.0.1.3680043.2.1125.{n}" for n in (21, 22, 23, 24)]


def test_a_dicom_folder_with_two_series_or_a_missing_or_doubled_slice_is_refused(tmp_path,
                                                                                 capfd):
    write_dicom_series(tmp_path / "complete", UIDS[0], [0.0, 2.5, 5.0, 7.5])
    write_dicom_series(tmp_path / "jitter", UIDS[1], [0.0, 2.5, 5.1, 7.5, 10.0])
    write_dicom_series(tmp_path / "two", UIDS[1], [0.0, 2.5, 5.0])
    write_dicom_series(tmp_path / "two", UIDS[2], [0.0, 2.5, 5.0])
    write_dicom_series(tmp_path / "gap", UIDS[3], [0.0, 2.5, 5.0, 10.0, 12.5])
    write_dicom_series(tmp_path / "doubled", UIDS[0], [0.0, 2.5, 2.5, 5.0])

    spacing = np.linalg.norm(load_scan(tmp_path / "complete").affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [1.0, 1.0, 2.5])
    with pytest.raises(MedsegError, match="two: .*holds 2 DICOM series .*put each series in its "
                                          "own folder"):
        load_scan(tmp_path / "two")
    # ITK itself only warns and spreads the 5 slices evenly: 3.125 mm, every organ stretched.
    with pytest.raises(MedsegError, match=r"gap: .*missing slices: 5 mm between slices at 5 and "
                                          r"10 mm, 2\.5 mm elsewhere; export the complete series"):
        load_scan(tmp_path / "gap")
    with pytest.raises(MedsegError, match="doubled: .*slices at the same position"):
        load_scan(tmp_path / "doubled")
    # Round-off that ITK marks as uneven sampling is no gap: the series loads, and ITK's
    # warning is not printed on top of medseg's own messages.
    capfd.readouterr()
    assert load_scan(tmp_path / "jitter").shape[-1] == 5
    assert "sampling" not in capfd.readouterr().err


def test_2d_input_and_single_slices_against_3d_and_2d_models(tmp_path):
    with pytest.raises(MedsegError, match=r"xray\.nii\.gz: a 2D image .*give the whole series"):
        load_scan(write_nifti(tmp_path / "xray.nii.gz", ct()[..., 0]))
    path = write_nifti(tmp_path / "slice.nii.gz", ct()[..., :1])
    single = load_scan(path)
    volume_model = open_model(tiny_checkpoint(tmp_path / "3d.pt"), EngineOptions(device="cpu"))
    with pytest.raises(MedsegError, match=r"slice\.nii\.gz: a single slice \(size 12x10x1\), but "
                                          "the model is 3D"):
        Pipeline(volume_model).check_fits(single, path)
    # A 2D model segments slice by slice, so one slice is a complete input for it.
    slice_model = open_model(tiny_checkpoint(tmp_path / "2d.pt", spatial_dims=2),
                            EngineOptions(device="cpu"))
    Pipeline(slice_model).check_fits(single, path)
    mask, _ = slice_model.predict(single)
    assert mask.shape == (12, 10, 1)


def test_infinite_voxels_are_refused_and_counted(tmp_path):
    image = ct().astype(np.float32)
    image[0, 0, :3] = [np.inf, -np.inf, np.nan]
    with pytest.raises(MedsegError, match=r"inf\.nii\.gz: image contains 3 NaN or infinite "
                                          "voxels; replace them"):
        load_scan(write_nifti(tmp_path / "inf.nii.gz", image))


@pytest.mark.parametrize("value", [0, -1024])
def test_a_blank_scan_is_refused(tmp_path, value):
    path = write_nifti(tmp_path / "blank.nii.gz", np.full(SHAPE, value, np.int16))
    with pytest.raises(MedsegError, match=rf"blank\.nii\.gz: every voxel is {value}, the scan is "
                                          "blank; check the export"):
        load_scan(path)


@pytest.mark.parametrize("name, array, warns", [
    ("normalised", np.random.default_rng(1).random(SHAPE, dtype=np.float32), True),
    ("z_scored", np.random.default_rng(2).normal(0, 1, SHAPE).astype(np.float32), True),
    ("no_intercept", (ct() + 1024).astype(np.uint16), True),  # raw detector values, HU + 1024
    ("offset", (ct() + 600).astype(np.int16), True),  # some stored values below 0, no air
    ("hounsfield", ct(), False),
])
def test_intensities_that_are_not_hounsfield_units_warn_but_load(tmp_path, warnings_seen, name,
                                                                 array, warns):
    volume = load_scan(write_nifti(tmp_path / f"{name}.nii.gz", array))
    np.testing.assert_allclose(volume[0].numpy(), array, rtol=1e-6)
    hu_warnings = [w for w in warnings_seen if "Hounsfield" in w and f"{name}.nii.gz" in w]
    assert len(hu_warnings) == warns


def test_cli_infer_fails_a_blank_scan_warns_on_a_normalised_one_and_does_the_rest(tmp_path):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    write_nifti(inputs / "good.nii.gz", ct())
    write_nifti(inputs / "blank.nii.gz", np.zeros(SHAPE, np.int16))
    write_nifti(inputs / "unit.nii.gz", np.random.default_rng(0).random(SHAPE, np.float32))
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", inputs,
                   "--output", tmp_path / "out", "--device", "cpu")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "2 done, 0 skipped (exist; --overwrite redoes them), 1 failed" in proc.stdout
    assert re.search(r"(^|\n)failed: \S*blank\.nii\.gz: every voxel is 0", proc.stderr)
    # Its own line, not glued to the end of the progress bar's.
    assert re.search(r"(^|[\r\n])warning: \S*unit\.nii\.gz: intensities", proc.stderr)
    assert visible(tmp_path / "out") == ["good.labels.json", "good.nii.gz", "labels.json",
                                         "unit.labels.json", "unit.nii.gz"]


def test_a_scan_with_a_zero_size_dimension_is_refused(tmp_path):
    path = write_nifti(tmp_path / "empty.nii.gz", np.zeros((12, 0, 8), np.int16))
    with pytest.raises(MedsegError, match=r"empty\.nii\.gz: the image holds no voxels \(size "
                                          r"\(12, 0, 8\)\); export it again"):
        load_scan(path)


@pytest.mark.parametrize("spacing, problem", [
    ((0.8, 0.0, 2.0), r"spacing 0\.8 x 0 x 2 mm is not plausible"),
    ((0.8, 0.8, 1000.0), r"spacing 0\.8 x 0\.8 x 1000 mm is not plausible"),
    ((0.001, 0.8, 2.0), r"spacing 0\.001 x 0\.8 x 2 mm is not plausible"),
    ((0.8, np.nan, 2.0), "NaN or infinite geometry"),
    ((0.8, 0.8, np.inf), "NaN or infinite geometry"),
])
def test_absurd_spacing_is_refused(tmp_path, spacing, problem):
    path = nifti_with_affine(tmp_path / "odd.nii.gz", ct(), np.diag([*spacing, 1.0]))
    with pytest.raises(MedsegError, match=rf"odd\.nii\.gz: .*{problem}.*; (fix|re-export)"):
        load_scan(path)


def _nrrd(path: Path, spacings: str, label: bool = False, slices: int = 8) -> Path:
    """A 12 x 10 x `slices` NRRD of CT values, or of labels 0/1."""
    header = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: 12 10 {slices}\nendian: little\n"
              f"encoding: raw\nspacings: {spacings}\n\n")
    values = ct((slices, 10, 12))
    values = (values > 0).astype(np.int16) if label else values
    path.write_bytes(header.encode() + values.astype("<i2").tobytes())
    return path


def test_nrrd_zero_spacing_is_refused_and_a_negative_one_is_read_as_a_flip(tmp_path):
    with pytest.raises(MedsegError, match=r"zero\.nrrd: cannot read image \(.*spacing"):
        load_scan(_nrrd(tmp_path / "zero.nrrd", "0 1 2"))
    # ITK (and so 3D Slicer and ITK-SNAP) read a negative spacing as a flipped axis: so do we.
    flipped = load_scan(_nrrd(tmp_path / "neg.nrrd", "-1.5 1 2")).affine.numpy()
    plain = load_scan(_nrrd(tmp_path / "pos.nrrd", "1.5 1 2")).affine.numpy()
    np.testing.assert_allclose(flipped[:3, 0], -plain[:3, 0])
    np.testing.assert_allclose(flipped[:3, 1:], plain[:3, 1:])


def test_memory_estimate_grows_with_the_working_grid_and_refuses_over_budget():
    shape, spacing, working = (512, 512, 400), (0.8, 0.8, 1.0), (2.0, 2.0, 2.0)
    need, grid = inference_bytes(shape, spacing, working, num_classes=10)
    assert grid == (205, 205, 200)  # ceil(512 * 0.8 / 2), ceil(400 * 1.0 / 2)
    # Linear in the working grid's voxels, at least one float32 probability per class each.
    sizes = {w: inference_bytes(shape, spacing, (w, w, w), 10)[0] for w in (1.0, 2.0, 4.0)}
    voxels = {w: np.prod([np.ceil(n * s / w) for n, s in zip(shape, spacing)]) for w in sizes}
    per_voxel = (sizes[1.0] - sizes[2.0]) / (voxels[1.0] - voxels[2.0])
    assert per_voxel == pytest.approx((sizes[2.0] - sizes[4.0]) / (voxels[2.0] - voxels[4.0]))
    assert per_voxel >= 10 * 4
    with pytest.raises(MedsegError, match=r"big\.nii\.gz: segmenting it needs about [\d.]+ GB "
                                          r"of memory \(205x205x200 voxels at the model's 2x2x2 "
                                          "mm, 10 classes\\), but .* crop the scan"):
        check_inference_memory(Path("big.nii.gz"), shape, spacing, working, 10, budget=need - 1)
    check_inference_memory(Path("big.nii.gz"), shape, spacing, working, 10, budget=need)


def test_infer_refuses_a_scan_too_large_for_memory_and_writes_nothing(tmp_path, monkeypatch):
    scan = write_nifti(tmp_path / "big.nii.gz", ct())
    # a 10 kB machine
    monkeypatch.setattr("medseg.inference.memory.available_bytes", lambda: 10_000)
    results = infer_cases(tiny_checkpoint(tmp_path / "m.pt"), scan, tmp_path / "out",
                          InferOptions(EngineOptions(device="cpu")))
    assert [r.status for r in results] == ["failed"]
    assert "big.nii.gz: segmenting it needs about" in results[0].error
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- labels


def test_label_ids_beyond_uint8_are_refused_before_they_wrap(tmp_path):
    for name, value in (("high", 300), ("negative", -1)):
        label = np.zeros(SHAPE, np.int16)
        label[2:5, 2:5, 2:5] = value
        path = write_nifti(tmp_path / f"{name}.nii.gz", label)
        with pytest.raises(MedsegError, match=rf"{name}\.nii\.gz: label values .* fall outside "
                                              "the label map"):
            load_scan(path, what="label")


def test_non_integer_labels_are_refused_in_training_and_evaluation(tmp_path):
    label = np.zeros(SHAPE, np.float32)
    label[2:5, 2:5, 2:5] = 1.0
    label[6, 6, 6] = 0.5  # a label resampled with linear interpolation
    path = write_nifti(tmp_path / "soft.nii.gz", label)
    with pytest.raises(MedsegError, match=r"soft\.nii\.gz: the label holds non-integer values "
                                          r"\(e\.g\. 0\.5\); resample labels with nearest"):
        load_scan(path, what="label")
    with pytest.raises(MedsegError, match=r"soft\.nii\.gz: mask holds non-integer values"):
        load_label_volume(path, {0: "background", 1: "liver"})


def test_an_all_background_label_warns_and_an_all_background_data_set_is_refused(
        tmp_path, warnings_seen):
    path = write_nifti(tmp_path / "empty_label.nii.gz", np.zeros(SHAPE, np.uint8))
    label = load_scan(path, what="label")
    assert any("empty_label.nii.gz: the label is all background" in w for w in warnings_seen)
    image = torch.as_tensor(ct()[None])
    with pytest.raises(MedsegError, match="none of the training labels has an organ voxel"):
        ct_normalization(image[label > 0].numpy())


def test_nrrd_image_and_label_on_different_grids_are_refused_once_loaded(tmp_path):
    # NIfTI pairs are compared from their headers up front (test_manifest.py); others here.
    image = _nrrd(tmp_path / "image.nrrd", "1.5 1 2")
    label = _nrrd(tmp_path / "label.nrrd", "1.5 1 2.5", label=True)
    with pytest.raises(MedsegError, match=r"label\.nrrd: label affine differs from the image's "
                                          r"\(image\.nrrd\); resample the label onto the image"):
        LoadScand(("image", "label"))({"image": image, "label": label})
    short = _nrrd(tmp_path / "short_label.nrrd", "1.5 1 2", label=True, slices=4)
    with pytest.raises(MedsegError, match=r"short_label\.nrrd: label shape \(12, 10, 4\) does "
                                          r"not match image shape \(12, 10, 8\)"):
        LoadScand(("image", "label"))({"image": image, "label": short})


# ------------------------------------------------------------------------------- manifests


def write_manifest(folder: Path, training, labels=LABELS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dataset.json"
    path.write_text(json.dumps({"labels": labels, "training": training}))
    return path


@pytest.mark.parametrize("labels, training, message", [
    (LABELS, "imagesTr/", r"'training' must be a list"),
    (["background", "liver"], [], r"'labels' must be an object"),
    (LABELS, [{"image": 3, "label": "l.nii.gz"}], r"training entry 0: 'image' must be a file "
                                                   "path, not 3"),
    (LABELS, [{"image": "a.nii.gz", "label": ""}], r"training entry 0: 'label' must be a file"),
    ({"1": "liver", "²": "spleen"}, [], r"label entry '²': 'spleen' has no integer id"),
])
def test_manifest_entries_of_the_wrong_type_are_clear_errors(tmp_path, labels, training,
                                                             message):
    manifest = write_manifest(tmp_path, training, labels)
    with pytest.raises(MedsegError, match=rf"dataset\.json: {message}"):
        load_manifest(manifest)


def test_a_folder_given_as_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(MedsegError, match=rf"{tmp_path.name}: a folder, not a JSON file"):
        load_manifest(tmp_path)


def test_a_case_listed_twice_is_refused(tmp_path):
    entries = [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"},
               {"image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz"},
               {"image": "./imagesTr/../imagesTr/a.nii.gz", "label": "labelsTr/a2.nii.gz"}]
    with pytest.raises(MedsegError, match=r"training entries 0 and 2 are the same image \(.*"
                                          r"imagesTr/a\.nii\.gz\); remove the duplicate"):
        load_manifest(write_manifest(tmp_path, entries))


def test_paths_escaping_the_data_root_are_refused_but_links_inside_it_work(tmp_path):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for path in ("../secret.nii.gz", str(elsewhere / "a.nii.gz")):
        manifest = write_manifest(root, [{"image": "imagesTr/a.nii.gz", "label": path}])
        with pytest.raises(MedsegError, match=r"training entry 0: label .* lies outside the data "
                                              "root .*; keep the data under the manifest's"):
            load_manifest(manifest)
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    manifest = write_manifest(root, [{"image": "linked/a.nii.gz", "label": "linked/l.nii.gz"}])
    cases, _ = load_manifest(manifest)
    assert cases[0]["image"] == str((elsewhere / "a.nii.gz").resolve())


def test_plan_names_a_case_file_that_does_not_exist(tmp_path):
    manifest = write_manifest(tmp_path, [{"image": "imagesTr/a.nii.gz",
                                          "label": "labelsTr/a.nii.gz"}])
    with pytest.raises(MedsegError, match=r"imagesTr/a\.nii\.gz: image file not found; fix its "
                                          "path in the manifest"):
        make_plan(manifest)


def test_cli_train_refuses_a_manifest_that_escapes_its_folder(tmp_path):
    manifest = write_manifest(tmp_path / "data", [{"image": "/etc/hostname",
                                                   "label": "labelsTr/a.nii.gz"}])
    proc = run_cli("train", "--manifest", manifest, "--output", tmp_path / "run",
                   *TINY_TRAIN_ARGS)
    assert_clean_failure(proc, "dataset.json", "outside the data root")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- checkpoints


def test_resuming_a_run_that_has_no_last_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(MedsegError, match=r"last\.pt: nothing to resume .*; give the run's "
                                          "folder as --output, or drop --resume"):
        resume_from(tmp_path / "last.pt", model=None, optimizer=None, scaler=None, meta={})


def test_weights_of_another_model_are_refused_naming_the_file(tmp_path):
    path = tiny_checkpoint(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    wider = build_network("unet3d", 1, len(LABELS), channels=(8, 16), strides=(2,))
    save_checkpoint(tmp_path / "swapped.pt", wider, payload["config"])
    with pytest.raises(MedsegError, match=r"swapped\.pt: weights do not fit the model they claim "
                                          r"\(.+\); use the checkpoint its own run wrote"):
        open_model(tmp_path / "swapped.pt", EngineOptions(device="cpu"))


def test_a_checkpoint_of_another_medseg_version_names_both_versions(tmp_path):
    torch.save({"format": 2, "medseg_version": "9.1.0", "config": {}, "state_dict": {}},
               tmp_path / "future.pt")
    with pytest.raises(MedsegError, match=rf"future\.pt: written by medseg 9\.1\.0 \(checkpoint "
                                          rf"format 2\), but this is medseg {__version__}"):
        load_checkpoint(tmp_path / "future.pt")
    payload = torch.load(tiny_checkpoint(tmp_path / "m.pt"), weights_only=True)
    payload["config"]["model"]["name"] = "segformer"
    payload["medseg_version"] = "9.1.0"
    torch.save(payload, tmp_path / "newer_model.pt")
    with pytest.raises(MedsegError, match=rf"written by medseg 9\.1\.0 for model 'segformer', "
                                          rf"which medseg {__version__} does not have"):
        open_model(tmp_path / "newer_model.pt", EngineOptions(device="cpu"))


def test_a_checkpoint_without_inference_settings_is_refused_by_name(tmp_path):
    save_checkpoint(tmp_path / "bare.pt", build_network("unet3d", 1, 2, channels=(4, 8)),
                    {"labels": LABELS})
    with pytest.raises(MedsegError, match=r"bare\.pt: the checkpoint's config lacks spacing, "
                                          "model, patch_size, intensity"):
        open_model(tmp_path / "bare.pt", EngineOptions(device="cpu"))


class _CreatesFile:
    """Unpickling this would create a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_cli_refuses_a_pickle_payload_without_running_it(tmp_path):
    marker = tmp_path / "created_by_the_checkpoint"
    payload = torch.load(tiny_checkpoint(tmp_path / "m.pt"), weights_only=True)
    payload["config"]["labels"] = _CreatesFile(marker)
    torch.save(payload, tmp_path / "evil.pt")
    scan = write_nifti(tmp_path / "a.nii.gz", ct())
    proc = run_cli("infer", "--model", tmp_path / "evil.pt", "--input", scan, "--output",
                   tmp_path / "out")
    assert_clean_failure(proc, "evil.pt: refused, it holds pickled code", "medseg train")
    assert "\x1b" not in proc.stderr and "weights_only" not in proc.stderr  # torch's unsafe tip
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- environment


def test_cli_refuses_an_unwritable_output_folder_before_any_work(tmp_path):
    (tmp_path / "file").write_text("a file where the output folder should go")
    scan = write_nifti(tmp_path / "a.nii.gz", ct())
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", scan,
                   "--output", tmp_path / "file" / "masks")
    assert_clean_failure(proc, "masks: cannot write output here", "is a file")


def test_an_output_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    # root ignores permission bits, so the refusal the kernel would give is simulated.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match=r"out: cannot write output here \(Permission denied\); "
                                          "choose another output folder or fix its permissions"):
        check_writable(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def three_scans_to_segment(tmp_path: Path) -> tuple[Path, list[str]]:
    """Scans a, b and c, and the `medseg infer` arguments that segment them into masks/."""
    inputs, out = tmp_path / "scans", tmp_path / "masks"
    inputs.mkdir()
    for seed, name in enumerate("abc"):
        write_nifti(inputs / f"{name}.nii.gz", ct(seed=seed))
    return out, ["infer", "--model", str(tiny_checkpoint(tmp_path / "m.pt")), "--input",
                 str(inputs), "--output", str(out), "--device", "cpu"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    model = build_network("unet3d", 1, 2, channels=(4, 8))
    save_checkpoint(tmp_path / "last.pt", model, {"epoch": 1})
    before = (tmp_path / "last.pt").read_bytes()
    real_open = open

    def full_disk(file, mode="r", *args, **kwargs):  # the temporary file lands on a full disk
        return real_open("/dev/full", mode) if ".part" in str(file) else real_open(file, mode)

    monkeypatch.setattr("medseg.nets.checkpoint.open", full_disk, raising=False)
    with pytest.raises(OutputError, match=r"last\.pt: disk full while writing \(No space left on "
                                          r"device\); nothing half-written is left: free space"):
        save_checkpoint(tmp_path / "last.pt", model, {"epoch": 2})
    assert (tmp_path / "last.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_during_inference_stops_the_batch_and_a_rerun_completes(tmp_path,
                                                                             monkeypatch):
    out, args = three_scans_to_segment(tmp_path)
    real_save, saved = nib.save, []

    def disk_fills_on_the_second_mask(image, filename):
        saved.append(filename)
        if len(saved) == 2:
            Path(filename).write_bytes(b"half a mask")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(image, filename)

    monkeypatch.setattr(nib, "save", disk_fills_on_the_second_mask)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "b.nii.gz: disk full while writing" in errors[0]
    assert len(saved) == 2  # stopped: c was not computed only to fail the same way
    assert sorted(os.listdir(out)) == ["a.labels.json", "a.nii.gz"]  # nothing of b, no temp
    monkeypatch.setattr(nib, "save", real_save)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "2 done, 1 skipped" in result.output


INTERRUPT_THE_SECOND_LAST_PT = """
import sys
import torch
real_save, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    if "last.pt" in str(getattr(f, "name", f)):
        calls.append(f)
        if len(calls) == 2:  # Ctrl-C half-way through epoch 2's checkpoint
            f.write(b"half a checkpoint")
            # What SIGINT's handler raises, raised here: a real signal is handled at the next
            # bytecode, which may fall in a finalizer run by the garbage collector, where
            # Python prints and drops the exception (so this test failed in 3 full runs).
            raise KeyboardInterrupt
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from cli import main
main(sys.argv[1:])
"""


def test_ctrl_c_during_training_keeps_the_last_checkpoint_and_resume_finishes(tiny_dataset,
                                                                             tmp_path):
    run = tmp_path / "run"
    three_epochs = ["--epochs", "3", *TINY_TRAIN_ARGS[2:]]
    args = ["train", "--manifest", str(tiny_dataset), "--output", str(run), *three_epochs]
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_THE_SECOND_LAST_PT, *args],
                          capture_output=True, text=True, errors="replace", timeout=600)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # epoch 1's, whole
    assert not [p for p in run.iterdir() if ".part" in p.name]

    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch 1" in resumed.stdout
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    assert [row.split(",")[0] for row in (run / "log.csv").read_text().splitlines()[1:]] == \
        ["1", "2", "3"]


KILL_DURING_THE_SECOND_MASK = """
import os, signal, sys
import nibabel
real_save, calls = nibabel.save, []
def save(image, filename):
    calls.append(filename)
    if len(calls) == 2:  # killed (OOM killer, kill -9) half-way through the second mask
        with open(filename, "wb") as f:
            f.write(b"half a mask")
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(image, filename)
nibabel.save = save
from cli import main
main(sys.argv[1:])
"""


def test_sigkill_during_inference_leaves_only_whole_masks_and_a_rerun_completes(tmp_path):
    out, args = three_scans_to_segment(tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_THE_SECOND_MASK, *args],
                          capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    # b's files, the half-written mask among them, are in a hidden staging folder.
    assert visible(out) == ["a.labels.json", "a.nii.gz"]
    assert nib.load(str(out / "a.nii.gz")).get_fdata().shape == SHAPE

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "2 done, 1 skipped" in rerun.stdout
    for name in ("a", "b", "c"):
        assert nib.load(str(out / f"{name}.nii.gz")).get_fdata().shape == SHAPE


def test_a_declared_root_admits_data_kept_elsewhere_and_nothing_beyond_it(tmp_path):
    """BTCV users keep images in /data/...: "root" in the manifest says where the data lives."""
    data = tmp_path / "btcv"
    manifest = tmp_path / "experiments" / "dataset.json"
    manifest.parent.mkdir()
    inside = {"image": str(data / "img" / "a.nii.gz"), "label": str(data / "label" / "a.nii.gz")}
    manifest.write_text(json.dumps({"labels": LABELS, "training": [inside], "root": str(data)}))
    cases, _ = load_manifest(manifest)
    assert cases[0]["image"] == str((data / "img" / "a.nii.gz").resolve())
    escaping = {**inside, "label": str(data / ".." / "secret.nii.gz")}
    manifest.write_text(json.dumps({"labels": LABELS, "training": [escaping], "root": str(data)}))
    with pytest.raises(MedsegError, match=r"label .* lies outside the data root .*btcv"):
        load_manifest(manifest)


def test_a_file_size_limit_with_dicom_outputs_stops_the_batch_in_one_line(real_data, tiny_run,
                                                                          tmp_path):
    """As a full disk does for the NIfTI mask: one line naming the file, the finished masks
    kept, no traceback per case (pydicom re-raises the write's OSError as another)."""
    import resource

    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a", "b"):
        (inputs / case).symlink_to(real_data / "dcmqi_3slice" / "dicom")

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = subprocess.run([sys.executable, "-m", "cli", "infer", "--model", str(tiny_run),
                           "--input", str(inputs), "--output", str(tmp_path / "out"),
                           "--output-type", "dicom-seg"], capture_output=True, text=True,
                          preexec_fn=limit_file_size, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert error == [f"error: {tmp_path / 'out' / 'a.seg.dcm'}: over this process's file-size "
                     "limit while writing (File too large); nothing half-written is left: raise "
                     "the limit (ulimit -f) or choose another output folder, then run again"]
    assert not (tmp_path / "out").exists()


def test_a_header_claiming_more_voxels_than_memory_holds_is_refused_before_reading(
        tmp_path, monkeypatch):
    """348 bytes of header say 2000^3 float32 voxels, the data is a few zeros: refused from
    the header, before the reader grows the process to 32 GB."""
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 4096)
    monkeypatch.setattr("medseg.data.io.available_bytes", lambda: 10 * 10**9)
    with pytest.raises(MedsegError, match=r"huge\.nii: its header claims 2000x2000x2000 voxels, "
                                          r"about 96 GB to read, but 10 GB of memory is"):
        load_scan(path)
    load_scan(write_nifti(tmp_path / "fine.nii.gz", ct()))  # what fits is read as before


@pytest.mark.parametrize("field, message", [
    ("origin", "origin lies 1e\\+30 mm from the scanner's centre"),
    ("scl_slope", "intensities reach .* far beyond any CT"),
])
def test_implausible_origins_and_intensity_scaling_are_refused(tmp_path, field, message):
    """Both gave an all-background mask with exit 0: far outside any scanner, or values no CT
    has, nothing the model saw in training."""
    image = nib.Nifti1Image(ct(), np.eye(4))
    if field == "origin":
        affine = np.eye(4)
        affine[:3, 3] = 1e30
        image = nib.Nifti1Image(ct(), affine)
    else:
        image.header.set_slope_inter(1e30, 0)
    path = tmp_path / f"{field}.nii.gz"
    nib.save(image, str(path))
    with pytest.raises(MedsegError, match=message):
        load_scan(path)


def test_a_single_voxel_scan_is_named_for_what_it_is(tmp_path):
    with pytest.raises(MedsegError, match=r"dot\.nii\.gz: the image is 1x1x1 voxels, not a slice "
                                          "or a volume"):
        load_scan(write_nifti(tmp_path / "dot.nii.gz", ct((1, 1, 1))))


def test_a_best_pt_that_is_a_folder_is_one_line(tmp_path):
    from medseg.models.open import open_model

    (tmp_path / "run" / "best.pt").mkdir(parents=True)
    with pytest.raises(MedsegError, match=r"best\.pt: a folder where the checkpoint file should "
                                          "be"):
        open_model(tmp_path / "run")


def test_a_cache_dir_that_cannot_be_made_is_one_line_before_the_run_starts(tiny_dataset,
                                                                           tmp_path):
    proc = run_cli("train", "--manifest", tiny_dataset, "--output", tmp_path / "run",
                   "--cache-dir", "/proc/medseg-cache", *TINY_TRAIN_ARGS)
    assert_clean_failure(proc, "/proc/medseg-cache: cannot write")
    assert not (tmp_path / "run").exists()


def test_the_python_api_checks_its_options_as_the_command_line_does(tmp_path):
    from medseg import Segmenter

    model = tiny_checkpoint(tmp_path / "m.pt")
    for bad, message in [({"overlap": float("nan")}, "overlap: nan is not a finite number"),
                         ({"overlap": 1.5}, "overlap: 1.5 is not a finite number"),
                         ({"sw_batch_size": 0}, "sw_batch_size: 0 is not a finite number"),
                         ({"min_volume_mm3": float("inf")}, "min_volume_mm3: inf"),
                         ({"tta": "yes"}, "tta: expected True or False, got 'yes'"),
                         ({"crf": True, "crf_iterations": -3}, "crf_iterations: -3"),
                         ({"roi_subset": ""}, "--roi-subset: no organ named")]:
        with pytest.raises(MedsegError, match=re.escape(message)):
            Segmenter(model, **bad)


def test_unclear_inputs_are_named_for_what_they_are(tmp_path, warnings_seen):
    """Complex voxels, a NIfTI named .nrrd, a FIFO in a folder of scans."""
    import os

    complex_scan = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(ct().astype(np.complex64), np.eye(4)), str(complex_scan))
    with pytest.raises(MedsegError, match=r"complex\.nii\.gz: holds complex numbers"):
        load_scan(complex_scan)
    misnamed = tmp_path / "scan.nrrd"
    misnamed.write_bytes(write_nifti(tmp_path / "scan.nii.gz", ct()).read_bytes())
    with pytest.raises(MedsegError, match=r"scan\.nrrd: holds a gzip-compressed NIfTI image but "
                                          r"is named \.nrrd; rename it to end in \.nii\.gz"):
        load_scan(misnamed)
    folder = tmp_path / "scans"
    folder.mkdir()
    write_nifti(folder / "a.nii.gz", ct())
    os.mkfifo(folder / "pipe")
    assert list_scans(folder) == [folder / "a.nii.gz"]
    assert any("pipe: left out, it is a FIFO" in w for w in warnings_seen)


def test_a_scan_whose_mask_name_is_too_long_fails_alone(tmp_path):
    """Its name fits the file system, its mask's longer name does not: that case fails, naming
    it; the folder is not blamed and the other cases are segmented."""
    folder = tmp_path / "scans"
    folder.mkdir()
    long = "x" * 245
    write_nifti(folder / f"{long}.nii", ct())
    write_nifti(folder / "b.nii.gz", ct())
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", folder,
                   "--output", tmp_path / "out", "--device", "cpu")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{long}.labels.json: this output's name is 257 bytes, longer than the file system " \
           "allows (255); rename the scan it is named after" in proc.stderr
    assert (tmp_path / "out" / "b.nii.gz").is_file()


def test_a_truncated_slice_of_a_de_identified_series_is_named(real_data, tmp_path):
    """The real series has no SeriesInstanceUID: GDCM left the damaged slice out silently and
    the gap was reported as missing slices, naming no file."""
    import shutil

    series = tmp_path / "series"
    series.mkdir()
    for slice_file in sorted((real_data / "petct_dicom" / "dicom").iterdir())[5:11]:
        shutil.copyfile(slice_file, series / slice_file.name)  # six slices are enough
    damaged = sorted(series.iterdir())[3]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsegError, match=rf"its slice {damaged.name} is damaged"):
        load_scan(series)


def test_a_manifest_naming_one_organ_twice_or_an_image_as_its_label_is_refused(tmp_path):
    """Train took both and evaluate then refused the run's own label map; an image given as
    its own label trained on CT values as organ ids."""
    image = write_nifti(tmp_path / "a.nii.gz", ct())
    label = write_nifti(tmp_path / "a_label.nii.gz", (ct() > 0).astype(np.uint8))
    cases = [{"image": str(image), "label": str(label)}]
    alike = tmp_path / "alike.json"
    alike.write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "Liver"},
                                 "training": cases}))
    proc = run_cli("plan", "--manifest", alike)
    assert_clean_failure(proc, "ids 1 and 2 both name 'liver'")
    same = tmp_path / "same.json"
    same.write_text(json.dumps({"labels": {"0": "background", "1": "liver"},
                                "training": [{"image": str(image), "label": str(image)}]}))
    proc = run_cli("plan", "--manifest", same)
    assert_clean_failure(proc, "training entry 0 gives the same file as image and label")


def test_a_finite_value_beyond_float32_is_said_to_read_as_infinite(tmp_path):
    image = ct().astype(np.float64)
    image[0, 0, 0] = 1e300
    with pytest.raises(MedsegError, match=r"1 NaN or infinite voxels; .*beyond 3\.4e38"):
        load_scan(write_nifti(tmp_path / "huge_value.nii.gz", image))
