"""The synthetic phantoms: deterministic, anatomically placed, realistic HU, varied geometry."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from medseg.data.phantoms import ORGAN_ID, SYNTHETIC_LABELS, make_phantom, random_geometry
from medseg.data.synth import write_synthetic_dataset


def world_centroid(phantom, organ: str) -> np.ndarray:
    """Centroid of an organ in RAS mm, computed from voxel indices and the affine."""
    idx = np.argwhere(phantom.label == ORGAN_ID[organ]).mean(axis=0)
    return phantom.affine[:3, :3] @ idx + phantom.affine[:3, 3]


def test_same_seed_same_case_different_seed_different_case():
    a, b, c = (make_phantom(seed, spacing=(2.5, 2.5, 4.0)) for seed in (3, 3, 4))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_dataset_files_are_byte_identical_for_the_same_seed(tmp_path):
    def digest(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*.nii.gz"))}

    write_synthetic_dataset(tmp_path / "a", 2, seed=5, spacing=(5, 5, 8), workers=1,
                            progress=False)
    write_synthetic_dataset(tmp_path / "b", 2, seed=5, spacing=(5, 5, 8), workers=1,
                            progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert len(digest(tmp_path / "a")) == 4


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LAS", "RPI"])
def test_organs_sit_where_anatomy_puts_them_in_any_stored_orientation(orientation):
    p = make_phantom(11, spacing=(3, 3, 4), orientation=orientation)
    assert "".join(nib.aff2axcodes(p.affine)) == orientation
    liver, spleen = world_centroid(p, "liver"), world_centroid(p, "spleen")
    right, left = world_centroid(p, "right_kidney"), world_centroid(p, "left_kidney")
    # RAS+: patient's right is +x, anterior +y, superior +z.
    assert liver[0] > 0 > spleen[0]
    assert right[0] > 0 > left[0]
    assert world_centroid(p, "stomach")[1] > right[1]  # stomach anterior to the kidneys
    assert liver[2] > right[2]  # liver above the kidneys


def test_every_organ_present_with_plausible_volume_and_hu():
    p = make_phantom(2, spacing=(2, 2, 3))
    voxel_ml = abs(np.linalg.det(p.affine[:3, :3])) / 1000.0
    volumes = {name: (p.label == idx).sum() * voxel_ml for name, idx in ORGAN_ID.items() if idx}
    assert set(np.unique(p.label)) == set(SYNTHETIC_LABELS)
    assert 800 < volumes["liver"] < 2500
    assert 60 < volumes["spleen"] < 400
    assert 10 < volumes["gallbladder"] < 100
    assert volumes["pancreas"] < volumes["right_kidney"] < volumes["liver"]
    liver_hu = np.median(p.image[p.label == ORGAN_ID["liver"]])
    assert 30 < liver_hu < 160
    outside = p.image[0, 0, :]  # a corner of the field of view is air
    assert outside.mean() < -900
    assert p.image.dtype == np.int16 and p.label.dtype == np.uint8


def test_random_geometry_stays_in_the_promised_ranges():
    draws = [random_geometry(np.random.default_rng(seed)) for seed in range(200)]
    spacings = np.array([spacing for spacing, _ in draws])
    assert np.all(spacings[:, 0] == spacings[:, 1])  # square in-plane pixels
    assert np.all((spacings[:, 0] >= 0.6) & (spacings[:, 0] <= 1.0))
    assert np.all((spacings[:, 2] >= 1.5) & (spacings[:, 2] <= 5.0))
    assert {code for _, code in draws} == {"RAS", "LPS", "LAS", "RPS", "LPI", "RAI"}


def test_a_phantom_is_stored_with_its_drawn_geometry():
    p = make_phantom(21)
    spacing, code = random_geometry(np.random.default_rng(21))
    np.testing.assert_allclose(np.linalg.norm(p.affine[:3, :3], axis=0), spacing)
    assert "".join(nib.aff2axcodes(p.affine)) == code
