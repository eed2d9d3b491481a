"""Masks land exactly on the input's grid: resampling oracles and full-predictor round trips."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_checkpoint
from scipy.ndimage import map_coordinates

from medseg.data.io import load_scan, save_nifti
from medseg.models.open import open_model
from medseg.models.options import EngineOptions
from medseg.models.resample import (
    SPARSE_MAX_BOUNDARY,
    _cell_agreement,
    resample_labels,
    resample_to_grid,
)


def rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def affine_of(spacing, direction=None, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if direction is None else direction) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def random_probs(shape, num_classes=4, seed=0) -> torch.Tensor:
    logits = torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(seed))
    smooth = torch.nn.functional.avg_pool3d(logits[None], 3, 1, 1)[0]  # spatially coherent
    return torch.softmax(smooth * 4, dim=0)


def region_probs(shape, num_classes, seed) -> torch.Tensor:
    """Organ-like probabilities: each class is likeliest near its own random centre, so labels
    form compact regions with thin boundaries, as a trained model's do."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, shape, size=(num_classes, 3))
    grid = np.stack(np.indices(shape), axis=-1)
    distance = np.linalg.norm(grid[None] - centres[:, None, None, None], axis=-1)
    return torch.softmax(torch.as_tensor(-distance, dtype=torch.float32), dim=0)


def test_same_grid_is_plain_argmax():
    probs = random_probs((7, 6, 5))
    affine = affine_of((1.5, 1.5, 3.0), origin=(10, -4, 2))
    out = resample_labels(probs, affine, affine, (7, 6, 5))
    np.testing.assert_array_equal(out, probs.argmax(0).numpy())


def test_flipped_grid_gives_flipped_labels():
    probs = random_probs((8, 6, 5))
    src = affine_of((2.0, 2.0, 2.0))
    flip_x = np.diag([-1.0, 1, 1, 1])
    flip_x[0, 3] = 7  # voxel i of the flipped grid sits where voxel 7 - i of the source does
    out = resample_labels(probs, src, src @ flip_x, (8, 6, 5))
    np.testing.assert_array_equal(out, probs.argmax(0).numpy()[::-1])


def test_oblique_upsampling_matches_scipy_and_chunks_do_not_change_it():
    probs = random_probs((10, 9, 8), seed=3)
    src = affine_of((3.0, 3.0, 4.0), rotation(20, 10), origin=(5, -3, 1))
    dst = affine_of((1.1, 1.3, 2.2), rotation(-5, 0), origin=(8, 2, 6))
    shape = (16, 14, 9)
    out = resample_labels(probs, src, dst, shape)
    # Oracle: scipy's linear interpolation of each class at the same source coordinates.
    idx = np.indices(shape).reshape(3, -1)
    src_idx = (np.linalg.inv(src) @ dst @ np.vstack([idx, np.ones(idx.shape[1])]))[:3]
    src_idx = np.clip(src_idx, 0, np.array(probs.shape[1:])[:, None] - 1)  # border padding
    expected = np.stack([map_coordinates(p, src_idx, order=1) for p in probs.numpy()])
    expected = expected.argmax(0).reshape(shape)
    assert (out == expected).mean() > 0.999
    chunked = resample_labels(probs, src, dst, shape, max_chunk_bytes=1)  # one slab per slice
    np.testing.assert_array_equal(chunked, out)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), rotation(30, 15)])
def test_labels_shortcut_equals_interpolating_every_class(direction):
    """Labels alone skip interpolation inside cells whose corners agree; same answer as dense."""
    probs = region_probs((24, 20, 12), num_classes=6, seed=5)
    boundary = (_cell_agreement(probs) < 0).float().mean()
    assert 0.05 < boundary < SPARSE_MAX_BOUNDARY  # the shortcut runs, and has boundaries to mind
    src = affine_of((4.0, 4.0, 4.0), origin=(0, 0, 0))
    shape, spacing = (70, 60, 16), np.array([0.9, 1.1, 2.5])
    # Centred in the source volume (23 x 19 x 11 voxels of 4 mm), whatever the direction.
    origin = np.array([46.0, 38.0, 22.0]) - direction @ (spacing * (np.array(shape) - 1) / 2)
    dst = affine_of(spacing, direction, origin=origin)
    fast, _ = resample_to_grid(probs, src, dst, shape)
    dense, _ = resample_to_grid(probs, src, dst, shape, keep_probabilities=True)
    assert len(np.unique(dense)) == 6
    np.testing.assert_array_equal(fast, dense)


class BrightIsForeground(torch.nn.Module):
    """A stand-in network with a known answer: class 1 wherever the normalised image is > 0."""

    def forward(self, x):
        return torch.cat([-x, x], dim=1) * 10


@pytest.fixture(scope="module")
def threshold_predictor(tmp_path_factory):
    # 2.3 mm: no scan voxel falls exactly midway between two working voxels, where this
    # saturated stand-in model's 0.5/0.5 ties would be decided by rounding.
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt",
                           labels={"0": "background", "1": "bright"}, spacing=[2.3, 2.3, 2.3])
    predictor = open_model(path, EngineOptions(device="cpu"))
    predictor.network = BrightIsForeground()
    return predictor


GEOMETRIES = {
    "RAS": affine_of((1.0, 1.0, 1.0), origin=(-20, -15, 10)),
    "LPS": affine_of((1.0, 1.0, 1.0), np.diag([-1.0, -1.0, 1.0]), origin=(20, 15, -10)),
    "anisotropic": affine_of((0.7, 0.7, 5.0), origin=(3, 4, 5)),
    "oblique": affine_of((1.2, 0.9, 2.5), rotation(25, 12), origin=(-7, 9, 30)),
    "flipped_z": affine_of((1.0, 1.0, 2.0), np.diag([1.0, -1.0, -1.0]), origin=(0, 0, 0)),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_predicted_mask_lands_on_the_input_grid(name, threshold_predictor, tmp_path):
    affine = GEOMETRIES[name]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    shape = tuple(int(v) for v in np.round(np.array([66.0, 57.0, 54.0]) / spacing))
    image = np.full(shape, -500, np.int16)
    # An off-centre box, so any flip or axis swap would miss it.
    lo = (np.array(shape) * [0.15, 0.3, 0.2]).astype(int)
    hi = (np.array(shape) * [0.55, 0.8, 0.6]).astype(int)
    image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 500
    src = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(src))

    scan = load_scan(src)
    mask, _ = threshold_predictor.predict(scan)
    save_nifti(mask, np.asarray(scan.affine), tmp_path / "mask.nii.gz", like=src)
    out = nib.load(str(tmp_path / "mask.nii.gz"))

    assert out.shape == shape
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    expected = image > 0
    got = np.asarray(out.dataobj) == 1
    dice = 2 * (expected & got).sum() / (expected.sum() + got.sum())
    assert dice > 0.9, f"{name}: Dice {dice:.3f} against the known answer"
