"""The command line end to end on tiny data, and its answers to bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_TRAIN_ARGS, assert_clean_failure, run_cli_here, write_nifti

from cli import main


def run_cli_process(*args: str) -> subprocess.CompletedProcess:
    """Run `medseg` in a fresh process, as a user would (tracebacks would show in stderr)."""
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True,
                          text=True, errors="replace", timeout=300)


# The refusals run in this process (a fresh one costs 4 s of imports each); the corrupt-scan
# run below and the help check keep a real process's exit code and output.
run_cli = run_cli_here


def test_train_writes_self_describing_checkpoints_and_logs(tiny_run):
    assert {"best.pt", "last.pt", "config.json", "log.csv"} <= {p.name for p in tiny_run.iterdir()}
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["labels"]["5"] == "liver" and config["spacing"] == [8.0, 8.0, 8.0]
    lo, hi = config["intensity"]["clip"]
    assert -1100 <= lo < hi <= 3100  # percentiles of labelled CT voxels, in HU
    assert len((tiny_run / "log.csv").read_text().splitlines()) == 2  # header + 1 epoch


def test_infer_then_evaluate_end_to_end(tiny_run, tiny_dataset, tmp_path):
    images = tiny_dataset.parent / "imagesTr"
    result = CliRunner().invoke(main, ["infer", "--model", str(tiny_run), "--input", str(images),
                                       "--output", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    for scan in sorted(images.iterdir()):
        source, mask = nib.load(str(scan)), nib.load(str(tmp_path / "pred" / scan.name))
        assert mask.shape == source.shape
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-6)
        assert mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mask.dataobj))) <= set(range(10))

    result = CliRunner().invoke(main, ["evaluate", "--pred", str(tmp_path / "pred"), "--ref",
                                       str(tiny_dataset.parent / "labelsTr"), "--output",
                                       str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["organs"]) == {"spleen", "right_kidney", "left_kidney", "gallbladder",
                                      "liver", "stomach", "aorta", "inferior_vena_cava",
                                      "pancreas"}
    assert summary["cases"] == 3 and "| liver |" in result.output
    for stats in summary["organs"].values():
        assert stats["n"] == 3 and 0.0 <= stats["dice_mean"] <= 1.0


def test_infer_skips_finished_cases_unless_overwrite(tiny_run, tiny_dataset, tmp_path):
    scan = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    args = ["infer", "--model", str(tiny_run), "--input", str(scan), "--output", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    first = (tmp_path / scan.name).stat().st_mtime_ns
    assert "1 skipped" in CliRunner().invoke(main, args).output
    assert (tmp_path / scan.name).stat().st_mtime_ns == first
    assert "1 done" in CliRunner().invoke(main, [*args, "--overwrite"]).output


def test_infer_reports_a_corrupt_scan_and_finishes_the_others(tiny_run, tiny_dataset, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    (inputs / good.name).write_bytes(good.read_bytes())
    (inputs / "broken.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    proc = run_cli_process("infer", "--model", tiny_run, "--input", inputs, "--output",
                           tmp_path / "out")
    assert proc.returncode == 1
    assert "broken.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        good.name.replace(".nii.gz", ".labels.json"), good.name, "labels.json"]


def test_missing_input_file(tiny_run, tmp_path):
    proc = run_cli("infer", "--model", tiny_run, "--input", tmp_path / "nope.nii.gz",
                   "--output", tmp_path / "out")
    assert_clean_failure(proc, "nope.nii.gz", "no such file")
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint(tiny_dataset, tmp_path):
    proc = run_cli("infer", "--model", tmp_path / "run", "--input", tiny_dataset.parent,
                   "--output", tmp_path / "out")
    assert_clean_failure(proc, "checkpoint not found")


def _manifest(tmp_path: Path, image: Path, label: Path) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "liver"},
                                "training": [{"image": str(image), "label": str(label)}]}))
    return path


@pytest.mark.parametrize("problem", ["corrupt", "4d", "shape_mismatch", "missing_label"])
def test_training_refuses_bad_cases_before_writing_anything(problem, tmp_path):
    image = write_nifti(tmp_path / "img.nii.gz", np.zeros((16, 16, 8), np.int16))
    label = write_nifti(tmp_path / "lab.nii.gz", np.zeros((16, 16, 8), np.uint8))
    expected = {"corrupt": "img.nii.gz", "4d": "expected a 3D image",
                "shape_mismatch": "label shape", "missing_label": "label file not found"}
    if problem == "corrupt":
        image.write_bytes(gzip.compress(b"garbage" * 50))
    elif problem == "4d":
        write_nifti(image, np.zeros((16, 16, 8, 2), np.int16))
        write_nifti(label, np.zeros((16, 16, 8, 2), np.uint8))
    elif problem == "shape_mismatch":
        write_nifti(label, np.zeros((16, 16, 7), np.uint8))
    else:
        label.unlink()
    out = tmp_path / "run"
    proc = run_cli("train", "--manifest", _manifest(tmp_path, image, label), "--output", out,
                   *TINY_TRAIN_ARGS)
    assert_clean_failure(proc, expected[problem])
    assert not list(out.glob("*.pt"))


def test_labels_outside_the_label_map_are_refused(tmp_path):
    ct = np.random.default_rng(0).integers(-1000, 400, (16, 16, 8)).astype(np.int16)
    image = write_nifti(tmp_path / "img.nii.gz", ct)
    label = write_nifti(tmp_path / "lab.nii.gz", np.full((16, 16, 8), 4, np.uint8))
    proc = run_cli("train", "--manifest", _manifest(tmp_path, image, label), "--output",
                   tmp_path / "run", *TINY_TRAIN_ARGS)
    assert_clean_failure(proc, "lab.nii.gz", "outside the label map")


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "segformer"], "choose one of: resunet, unet, fcn, dilated"),
    (["--upsample", "bicubic", "--model", "unet"], "unknown upsampling 'bicubic'"),
    (["--context-slices", "2"], "add --dims 2"),
    (["--loss", "focal"], "unknown loss 'focal'"),
    (["--class-weights", "1,2"], "label map has 10 classes"),
])
def test_bad_model_and_loss_settings_are_explained_before_any_work(args, message, tiny_dataset,
                                                                   tmp_path):
    result = CliRunner().invoke(main, ["train", "--manifest", str(tiny_dataset), "--output",
                                       str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not list((tmp_path / "run").glob("*"))


def test_2d_training_and_slice_by_slice_inference_end_to_end(tiny_dataset, tmp_path):
    run = tmp_path / "run2d"
    result = CliRunner().invoke(main, [
        "train", "--manifest", str(tiny_dataset), "--output", str(run), *TINY_TRAIN_ARGS,
        "--model", "unet", "--dims", "2", "--context-slices", "1", "--upsample", "nearest",
        "--loss", "dice", "--squared-dice"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {"name": "unet", "in_channels": 3, "spatial_dims": 2,
                               "context_slices": 1,
                               "kwargs": {"channels": [4, 8, 16], "upsample": "nearest"}}
    assert config["loss"] == {"name": "dice", "squared_pred": True}

    scan = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    result = CliRunner().invoke(main, ["infer", "--model", str(run), "--input", str(scan),
                                       "--output", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    source, mask = nib.load(str(scan)), nib.load(str(tmp_path / "pred" / scan.name))
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-6)
    assert set(np.unique(np.asarray(mask.dataobj))) <= set(range(10))


def test_help_is_fast_and_lists_the_commands():
    proc = run_cli_process("--help")  # as a user types it, in a fresh process
    assert proc.returncode == 0
    for command in ("synth", "train", "crossval", "infer", "evaluate", "convert"):
        assert command in proc.stdout


def test_run_folder_holds_split_curves_and_tensorboard_events(tiny_run):
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["validation"]) == 1
    assert (tiny_run / "training_curves.png").stat().st_size > 1000
    assert list((tiny_run / "tensorboard").glob("events.out.tfevents.*"))
