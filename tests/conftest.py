"""Shared fixtures: tiny synthetic data sets and a tiny trained run, built once per session."""

from __future__ import annotations

import json
import locale
import logging
import subprocess
import traceback
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.demo import REAL_CASE_LABELS, write_real_case

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
# A model folder trained by nnU-Net itself (tests/test_nnunet.py says how).
NNUNET_MODEL = Path(__file__).parent / "data" / "nnunet" / "model"
# Coarse fixed spacing keeps every phantom around 90 x 65 x 40 voxels.
TINY_SPACING = (4.0, 4.0, 6.0)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real CT samples beside the checkout; tests skip cleanly without them."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CT samples not found at {REAL_DATA}")
    return REAL_DATA


def run_cli_here(*args) -> subprocess.CompletedProcess:
    """`medseg ARGS` in this process (a fresh one costs seconds of imports), reported like a
    subprocess: an exception that escaped the CLI shows as a traceback in stderr."""
    from click.testing import CliRunner

    from cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback: " + "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


@pytest.fixture(autouse=True)
def no_model_downloads(monkeypatch, tmp_path_factory):
    """No test fetches a model from the internet: medseg is offline and keeps what it would
    fetch in a temporary home (tests/test_download.py serves archives on the loopback address
    and goes online itself)."""
    monkeypatch.setenv("MEDSEG_OFFLINE", "1")
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path_factory.getbasetemp() / "medseg_home"))


@pytest.fixture
def warnings_seen():
    """Warnings medseg logs (the CLI turns off propagation to the root logger, so caplog can't)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("medseg")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Three coarse phantoms in Decathlon layout; returns the dataset.json path."""
    from medseg.data.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("tiny_dataset")
    return write_synthetic_dataset(out, 3, seed=7, spacing=TINY_SPACING, workers=1,
                                   progress=False)


TINY_TRAIN_ARGS = ["--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "1",
                   "--spacing", "8,8,8", "--patch-size", "32,32,16", "--channels", "4,8,16",
                   "--val-every", "1"]


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:
    """A run folder trained for two iterations through the CLI (enough to have real weights)."""
    from click.testing import CliRunner

    from cli import main

    out = tmp_path_factory.mktemp("tiny_run")
    result = CliRunner().invoke(main, ["train", "--manifest", str(tiny_dataset), "--output",
                                       str(out), *TINY_TRAIN_ARGS])
    assert result.exit_code == 0, result.output
    return out


def assert_clean_failure(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """One error line naming the problem, exit code 2, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


LABELS = {"0": "background", "1": "liver", "2": "spleen"}
SHAPE = (12, 10, 8)


def ct(shape=SHAPE, seed=0) -> np.ndarray:
    """Random int16 voxels from air to contrast-filled vessels: looks like CT to every check."""
    return np.random.default_rng(seed).integers(-1000, 400, shape).astype(np.int16)


def tiny_checkpoint(path: Path, spatial_dims: int = 3, **config) -> Path:
    """An untrained two-level U-Net with everything inference reads (instant to build);
    `config` overrides any of its settings (labels, spacing, patch_size, intensity, ...)."""
    from medseg.nets.checkpoint import save_checkpoint
    from medseg.nets.registry import build_network

    kwargs = {"channels": (4, 8), "strides": (2,)}
    settings = {"model": {"name": "unet3d", "kwargs": kwargs, "in_channels": 1,
                          "spatial_dims": spatial_dims},
                "labels": LABELS, "spacing": [2.0, 2.0, 2.0], "patch_size": [16, 16, 16],
                "intensity": {"clip": [-1000.0, 1000.0], "mean": 0.0, "std": 100.0}} | config
    network = build_network("unet3d", 1, len(settings["labels"]), spatial_dims=spatial_dims,
                            **kwargs)
    save_checkpoint(path, network, settings)
    return path


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save an array as NIfTI (identity affine by default) and return the path."""
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def write_dicom_series(folder: Path, uid: str, z_positions: list[float]) -> None:
    """Write a tiny 3x4 int16 DICOM series; slice k is filled with k and sits at z_positions[k].

    GDCM's writer switches the process locale to "C", after which Python writes text as ASCII
    (a later report.md with a "±" fails), so the locale is put back.
    """
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, uid, z_positions)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_dicom_slices(folder: Path, uid: str, z_positions: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, z in enumerate(z_positions):
        sl = sitk.GetImageFromArray(np.full((4, 3), k, dtype=np.int16))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{uid}.{k + 1}",
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0013": str(len(z_positions) - k),  # instance numbers run against z on purpose
            "0020|0032": f"0\\0\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # otherwise GDCM invents a new SeriesInstanceUID
        writer.SetFileName(str(folder / f"{uid}_{k:02d}.dcm"))
        writer.Execute(sl)


# The real case's organs, remapped by name from its TotalSegmentator mask.
REAL_LABELS = REAL_CASE_LABELS


@pytest.fixture(scope="session")
def real_case(real_data, tmp_path_factory) -> Path:
    """The real DICOM series with its TotalSegmentator mask remapped to REAL_LABELS by name, as a
    Decathlon data set: images/petct (the series, linked) and labels/petct.nii.gz; returns the
    dataset.json path."""
    return write_real_case(real_data / "petct_dicom", tmp_path_factory.mktemp("real_case"))


# The real mask's abdominal organs, with TotalSegmentator's own spelling of their names.
ABDOMEN = (1, 2, 3, 4, 5, 6, 7, 8, 9, 19, 52, 63, 64)


@pytest.fixture(scope="session")
def real_mask(real_data):
    """The real series' TotalSegmentator mask (abdominal organs), on the scan's grid as medseg
    reads the series, its affine, and its label map as TotalSegmentator spells it."""
    folder = real_data / "petct_dicom"
    reference = nib.load(str(folder / "reference_seg_totalsegmentator_v2fast.nii.gz"))
    from medseg.data.io import load_scan

    scan = load_scan(folder / "dicom")
    classes = json.loads((folder / "totalseg_classmap_total_v2.json").read_text())
    labels = {0: "background", **{i: classes[str(i)] for i in ABDOMEN}}
    mask = np.asarray(reference.dataobj).astype(np.uint8)
    mask[~np.isin(mask, ABDOMEN)] = 0
    # The reference is stored with rows the other way round: moved onto the scan's grid by
    # nearest world position, as any two grids of the same series are related.
    scan_affine = np.asarray(scan.affine, dtype=float)
    index = np.linalg.inv(reference.affine) @ scan_affine
    assert np.allclose(index, np.round(index), atol=1e-3)
    grid = np.indices(mask.shape).reshape(3, -1)
    source = np.rint(index[:3, :3] @ grid + index[:3, 3:]).astype(int)
    on_scan = mask[tuple(source)].reshape(mask.shape)
    return on_scan, scan_affine, labels, scan[0].numpy()


def dicom_outputs_of(mask, affine, labels, series, seg=None, rtstruct=None):
    """A mask on a series' grid written as a DICOM-SEG and/or an RTSTRUCT by medseg's writers
    (the series read and the mask put on its slices, as `medseg infer` does); returns the
    paths asked for."""
    from medseg.outputs.dicom import (
        frames_on_slices,
        source_slices,
        write_dicom_seg,
        write_rtstruct,
    )

    slices = source_slices(series)
    frames = frames_on_slices(mask, affine, slices, series)
    written = []
    if seg is not None:
        written.append(write_dicom_seg(frames, labels, slices, seg, "medseg model test"))
    if rtstruct is not None:
        written.append(write_rtstruct(frames, labels, series, slices, rtstruct))
    return written[0] if len(written) == 1 else written


def convert_inputs(tmp_path: Path, case: str, series: Path) -> tuple[Path, Path]:
    """`medseg convert`'s inputs: images/CASE linked to a series, an empty annotations/."""
    images, annotations = tmp_path / "images", tmp_path / "annotations"
    images.mkdir()
    annotations.mkdir()
    (images / case).symlink_to(series)
    return images, annotations


def convert_3slice(real_data: Path, tmp_path: Path, organs=("liver", "spine", "heart"),
                   case: str = "ct") -> Path:
    """The real 3-slice series with organs people drew (NRRD, one file each) through
    `medseg convert`; returns the nnU-Net raw folder (imagesTr/CASE_0000, labelsTr/CASE)."""
    folder = real_data / "dcmqi_3slice"
    images, annotations = convert_inputs(tmp_path, case, folder / "dicom")
    (annotations / case).mkdir()
    for organ in organs:
        (annotations / case / f"{organ}.nrrd").symlink_to(folder / f"{organ}_seg.nrrd")
    raw = tmp_path / "raw"
    proc = run_cli_here("convert", "--images", images, "--annotations", annotations,
                        "--output", raw)
    assert proc.returncode == 0, proc.stderr
    return raw


def write_totalseg_home(home: Path, parts: dict[int, list[str]]) -> Path:
    """A TotalSegmentator-shaped weights folder: the nnU-Net test model under each part's
    dataset id, its dataset.json renamed to the part's classes (TotalSegmentator's spelling);
    returns `home`, for TOTALSEG_HOME_DIR."""
    import shutil

    for dataset, names in parts.items():
        folder = (home / "nnunet" / "results" / f"Dataset{dataset}_TotalSegmentator_part"
                  / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres")
        shutil.copytree(NNUNET_MODEL, folder)
        spec = json.loads((folder / "dataset.json").read_text())
        spec["labels"] = {"background": 0, **{n: i + 1 for i, n in enumerate(names)}}
        (folder / "dataset.json").write_text(json.dumps(spec))
    return home


# A MONAI bundle as the Model Zoo lays them out (configs/inference.json, configs/metadata.json,
# models/model.pt), with spleen_ct_segmentation's kind of preprocessing, a small UNet.
BUNDLE_LABELS = {"0": "background", "1": "liver", "2": "spleen"}


def bundle_config(**changes) -> dict:
    """inference.json in the Model Zoo's form, with the parts MONAI's runner needs besides
    those medseg reads (never evaluated by medseg)."""
    config = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "highres": False,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
                        "out_channels": 3,
                        "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image",
             "pixdim": "$[1.5, 1.5, 1.5] if @highres else [3.0, 3.0, 3.0]", "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [48, 48, 16],
                    "sw_batch_size": 4, "overlap": 0.5, "mode": "gaussian"},
        "run": ["$@evaluator.run()"],
    }
    config.update(changes)
    return config


def write_bundle(folder: Path, config: dict | None = None, metadata: dict | None = None,
                 seed: int = 0) -> Path:
    """A bundle folder with seeded random weights for its network_def."""
    import torch
    from monai.networks.nets import UNet

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    config = config or bundle_config()
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    metadata = metadata or {"version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT",
                             "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                             "channel_def": BUNDLE_LABELS}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    torch.manual_seed(seed)
    network = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(8, 16, 32),
                   strides=(2, 2), num_res_units=1)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder
