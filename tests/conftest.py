"""Shared fixtures: tiny synthetic data sets and a tiny trained run, built once per session."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
# Coarse fixed spacing keeps every phantom around 90 x 65 x 40 voxels.
TINY_SPACING = (4.0, 4.0, 6.0)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real CT samples beside the checkout; tests skip cleanly without them."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CT samples not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Three coarse phantoms in Decathlon layout; returns the dataset.json path."""
    from medseg.synth import write_synthetic_dataset

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


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save an array as NIfTI (identity affine by default) and return the path."""
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path
