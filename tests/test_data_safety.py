"""Nothing a user types destroys data: inputs are never outputs, runs are never clobbered,
colliding names are refused, and only regular files of the user's own are ever replaced."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_TRAIN_ARGS, assert_clean_failure, ct, tiny_checkpoint, write_nifti
from conftest import run_cli_here as run_cli


def fingerprints(folder: Path) -> dict[str, str]:
    """Every file under folder and a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def scans(tmp_path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a", "b"):
        write_nifti(folder / f"{name}.nii.gz", ct())
    return folder


@pytest.mark.parametrize("output, relation", [(".", "is"), ("masks", "lies inside")])
def test_infer_never_writes_into_its_input_folder(scans, tmp_path, output, relation):
    before = fingerprints(scans)
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", scans,
                   "--output", scans / output, "--overwrite", "--device", "cpu")
    assert_clean_failure(proc, f"the output folder {relation} the input")
    assert fingerprints(scans) == before and not (scans / "masks").exists()


def test_infer_refuses_an_output_folder_that_holds_its_input_file(scans, tmp_path):
    before = fingerprints(scans)
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input",
                   scans / "a.nii.gz", "--output", scans, "--overwrite", "--device", "cpu")
    assert_clean_failure(proc, "the output folder contains the input")
    assert fingerprints(scans) == before


def test_evaluate_refuses_to_write_into_its_predictions(scans, tmp_path):
    proc = run_cli("evaluate", "--pred", scans, "--ref", scans, "--output", scans / "eval",
                   "--labels", "btcv")
    assert_clean_failure(proc, "the output folder lies inside the predictions")
    assert not (scans / "eval").exists()


def test_scans_whose_masks_would_share_a_name_are_refused_as_a_batch(tmp_path):
    import SimpleITK as sitk

    folder = tmp_path / "scans"
    folder.mkdir()
    write_nifti(folder / "a.nii", ct(seed=1))
    write_nifti(folder / "a.nii.gz", ct(seed=2))
    sitk.WriteImage(sitk.GetImageFromArray(ct(seed=3)), str(folder / "a.nrrd"))
    write_nifti(folder / "c_0000.nii.gz", ct(seed=4))
    write_nifti(folder / "c.nii.gz", ct(seed=5))
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", folder,
                   "--output", tmp_path / "out", "--device", "cpu")
    assert_clean_failure(proc, "a.nii, a.nii.gz, a.nrrd -> a.nii.gz",
                         "c.nii.gz, c_0000.nii.gz -> c.nii.gz", "rename them")
    assert not (tmp_path / "out").exists()


def test_only_this_models_finished_masks_are_skipped(scans, tmp_path):
    out = tmp_path / "out"
    first, second = tiny_checkpoint(tmp_path / "m1.pt"), tmp_path / "m2.pt"
    args = ["--input", scans, "--output", out, "--device", "cpu"]
    assert run_cli("infer", "--model", first, *args).returncode == 0
    again = run_cli("infer", "--model", first, *args)
    assert again.returncode == 0 and "0 done, 2 skipped" in again.stdout
    tiny_checkpoint(second, intensity={"clip": [-500.0, 500.0], "mean": 0.0, "std": 50.0})
    written = fingerprints(out)
    other = run_cli("infer", "--model", second, *args)
    assert_clean_failure(other, "already holds 2 file(s) that this model did not write",
                         "--overwrite")
    assert fingerprints(out) == written
    (out / "a.nii.gz").unlink()
    write_nifti(out / "a.nii.gz", np.zeros((4, 4, 4), np.uint8))  # someone else's file
    foreign = run_cli("infer", "--model", first, *args)
    assert_clean_failure(foreign, "already holds 1 file(s) that this model did not write "
                                  "(a.nii.gz)")
    replaced = run_cli("infer", "--model", second, *args, "--overwrite")
    assert replaced.returncode == 0 and "2 done" in replaced.stdout


def test_train_refuses_to_clobber_a_finished_run_and_replaces_it_only_when_asked(
        tiny_dataset, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--manifest", tiny_dataset, "--output", run, *TINY_TRAIN_ARGS]
    assert run_cli(*args).returncode == 0
    before = fingerprints(run)
    proc = run_cli(*args)
    assert_clean_failure(proc, "holds a training run", "--resume", "--overwrite")
    assert fingerprints(run) == before
    assert_clean_failure(run_cli(*args, "--resume", "--overwrite"), "give one of them")
    replaced = run_cli(*args, "--overwrite")
    assert replaced.returncode == 0 and f"replacing the training run in {run}" in replaced.stdout
    assert len((run / "log.csv").read_text().splitlines()) == 2  # one run's epoch, not two
    assert len(list((run / "tensorboard").iterdir())) == 1  # one event file, not two runs'


def test_plan_refuses_an_existing_file_without_overwrite(tiny_dataset, tmp_path):
    target = tmp_path / "plan.json"
    target.write_text("{}")
    assert_clean_failure(run_cli("plan", "--manifest", tiny_dataset, "--output", target),
                         "already there", "--overwrite")
    assert target.read_text() == "{}"
    proc = run_cli("plan", "--manifest", tiny_dataset, "--output", target, "--overwrite")
    assert proc.returncode == 0 and "spacing" in json.loads(target.read_text())


def test_writes_never_replace_a_fifo_a_folder_or_another_users_file(tiny_run, tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    assert_clean_failure(run_cli("report", tiny_run, "--output", fifo),
                         "is a FIFO, not a file medseg writes")
    assert fifo.is_fifo()
    folder = tmp_path / "folder.png"
    (folder / "inside").mkdir(parents=True)
    proc = run_cli("report", tiny_run, "--output", folder)  # click refuses it as it parses
    assert proc.returncode == 2 and "is a directory" in proc.stderr
    assert "Traceback" not in proc.stderr and (folder / "inside").is_dir()
    from medseg.data.files import atomic_output
    from medseg.errors import OutputError

    with pytest.raises(OutputError, match="folder.png: is a folder, not a file medseg writes"):
        with atomic_output(folder):
            pass
    assert (folder / "inside").is_dir()
    if os.getuid() == 0:  # only root can give a file away
        theirs = tmp_path / "theirs.png"
        theirs.write_bytes(b"not ours")
        os.chown(theirs, 12345, 12345)
        assert_clean_failure(run_cli("report", tiny_run, "--output", theirs),
                             "belongs to another user (uid 12345)")
        assert theirs.read_bytes() == b"not ours"


def test_plan_and_report_never_write_over_their_own_inputs(tiny_dataset, tiny_run, tmp_path):
    manifest_bytes = tiny_dataset.read_bytes()
    proc = run_cli("plan", "--manifest", tiny_dataset, "--output", tiny_dataset, "--overwrite")
    assert_clean_failure(proc, "is an input of this command")
    assert tiny_dataset.read_bytes() == manifest_bytes
    log_bytes = (tiny_run / "log.csv").read_bytes()
    proc = run_cli("report", tiny_run, "--output", tiny_run / "log.csv")
    assert_clean_failure(proc, "is an input of this command")
    assert (tiny_run / "log.csv").read_bytes() == log_bytes


def test_a_scan_reached_through_a_link_into_the_output_folder_is_never_overwritten(tmp_path):
    """The input folder holds a link to a scan that lies in the output folder: with
    --overwrite its mask would replace the scan itself (same case name, same folder)."""
    masks, inputs = tmp_path / "masks", tmp_path / "inputs"
    masks.mkdir()
    inputs.mkdir()
    scan = write_nifti(masks / "a.nii.gz", ct())
    (inputs / "a.nii.gz").symlink_to(scan)
    before = fingerprints(masks)
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", inputs,
                   "--output", masks, "--overwrite", "--device", "cpu")
    assert_clean_failure(proc, "a.nii.gz: leads to", "inside the output folder")
    assert fingerprints(masks) == before


def test_a_dicom_series_whose_slices_lead_into_the_output_folder_is_refused(tmp_path):
    from conftest import write_dicom_series

    masks, series = tmp_path / "masks", tmp_path / "inputs" / "series"
    write_dicom_series(masks / "slices", "1.2.3.4", [0.0, 1.0, 2.0])
    series.mkdir(parents=True)
    for slice_file in sorted((masks / "slices").iterdir()):
        (series / slice_file.name).symlink_to(slice_file)
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", series,
                   "--output", masks, "--device", "cpu")
    assert_clean_failure(proc, "leads to", "inside the output folder")


def test_a_link_loop_given_as_input_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    proc = run_cli("infer", "--model", tiny_checkpoint(tmp_path / "m.pt"), "--input", loop,
                   "--output", tmp_path / "out", "--device", "cpu")
    assert_clean_failure(proc, "loop: a symbolic link that leads nowhere")
    assert not (tmp_path / "out").exists()


def test_a_file_put_at_a_mask_path_during_the_run_is_left_as_it_is(scans, tmp_path):
    """The check at the start sees no file at a.nii.gz; one appears while the case is being
    segmented (another program, a person): without --overwrite it is not replaced."""
    from medseg import Segmenter

    out = tmp_path / "out"
    segmenter = Segmenter(tiny_checkpoint(tmp_path / "m.pt"), device="cpu")
    predict = segmenter.pipeline.predictor.predict

    def predict_while_someone_writes(scan):
        write_nifti(out / "a.nii.gz", ct(seed=5))
        return predict(scan)

    segmenter.pipeline.predictor.predict = predict_while_someone_writes
    results = {r.source.name: r for r in segmenter.segment_folder(scans, out)}
    assert results["a.nii.gz"].status == "failed"
    assert "appeared while this case was segmented" in results["a.nii.gz"].error
    assert results["b.nii.gz"].status == "done"
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "a.nii.gz")).dataobj),
                                  ct(seed=5))


def test_two_runs_into_one_folder_never_interleave(scans, tmp_path):
    from medseg.data.files import folder_lock

    out, model = tmp_path / "out", tiny_checkpoint(tmp_path / "m.pt")
    with folder_lock(out):  # another run holds the folder
        proc = run_cli("infer", "--model", model, "--input", scans, "--output", out,
                       "--device", "cpu")
        assert_clean_failure(proc, "another medseg run is writing into this folder")
        assert list(out.iterdir()) == []
    proc = run_cli("infer", "--model", model, "--input", scans, "--output", out,
                   "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
