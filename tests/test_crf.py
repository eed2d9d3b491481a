"""The dense CRF (`medseg infer --crf`): its filters against exact sums and scipy, what it does
to boundaries, and the command end to end."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import ndimage

from cli import main
from medseg.errors import MedsegError
from medseg.inference.memory import inference_bytes
from medseg.models.crf import Kernels, blur, refine
from medseg.models.options import CRFSettings, EngineOptions

SPACING = (1.5, 1.5, 2.5)


def _grid(shape):
    return np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")


def _exact_appearance(image, q, spacing, settings) -> np.ndarray:
    """sum_j k(i, j) q(j) / sum_j k(i, j) by brute force over every pair of voxels."""
    lo, hi = settings.window
    intensity = np.clip(image, lo, hi).ravel()
    exponent = -(intensity[:, None] - intensity[None]) ** 2 / (2 * settings.appearance_hu ** 2)
    for along, mm in zip(_grid(image.shape), spacing):
        position = along.ravel() * mm
        exponent -= (position[:, None] - position[None]) ** 2 / (2 * settings.appearance_mm ** 2)
    k = np.exp(exponent)
    return (k @ q.ravel() / k.sum(1)).reshape(image.shape)


@pytest.mark.parametrize("spacing, settings", [
    ((1.5, 1.5, 3.0), CRFSettings(appearance_mm=6.0, appearance_hu=20.0)),
    ((0.8, 2.0, 1.0), CRFSettings(appearance_mm=6.0, appearance_hu=20.0)),
    ((4.0, 4.0, 4.0), CRFSettings()),  # the defaults on a coarse working grid
])
def test_the_appearance_filter_approximates_the_exact_bilateral_sum(spacing, settings):
    rng = np.random.default_rng(0)
    shape = (20, 18, 12)
    x, y, _ = _grid(shape)
    image = np.where((x - 10) ** 2 + (y - 9) ** 2 < 36, 120.0, 20.0) + rng.normal(0, 10, shape)
    image[:3] = -900  # air, beyond the window
    kernels = Kernels(torch.tensor(image, dtype=torch.float32), spacing, settings)
    everything = tuple(slice(0, n) for n in shape)
    for q in [(x < 10), (x - 10) ** 2 + (y - 9) ** 2 < 50, rng.random(shape) > 0.5]:
        q = q.astype(np.float32)
        approx = (kernels._appearance(torch.from_numpy(q), everything) / kernels.norm).numpy()
        exact = _exact_appearance(image, q, spacing, settings)
        error = np.abs(approx - exact)
        assert error.max() < 0.08 and error.mean() < 0.01, (error.max(), error.mean())


def test_the_smoothness_blur_is_scipys_gaussian_with_edges_repeated():
    volume = torch.rand(17, 9, 6)
    sigmas = (2.0, 1.0, 0.7)
    ours = blur(volume, sigmas, replicate=True).numpy()
    theirs = ndimage.gaussian_filter(volume.numpy().astype(np.float64), sigmas, mode="nearest",
                                     truncate=3.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    zeros = blur(volume, sigmas, replicate=False).numpy()
    np.testing.assert_allclose(zeros, ndimage.gaussian_filter(
        volume.numpy().astype(np.float64), sigmas, mode="constant", truncate=3.0), atol=1e-5)


def _ball_case(shift_voxels: float, blur_voxels: float = 0.0):
    """A 'kidney' (30 HU) in fat (-100 HU) with noise, and probabilities for it whose boundary
    is shifted outward by shift_voxels and blurred."""
    rng = np.random.default_rng(1)
    shape = (40, 40, 24)
    x, y, z = _grid(shape)
    radius = np.sqrt(((x - 20) * SPACING[0]) ** 2 + ((y - 20) * SPACING[1]) ** 2
                     + ((z - 12) * SPACING[2]) ** 2)
    truth = radius < 15.0
    image = np.where(truth, 30.0, -100.0) + rng.normal(0, 8, shape)
    margin = radius - 15.0 - shift_voxels * SPACING[0]
    organ = 1 / (1 + np.exp(margin / max(blur_voxels * SPACING[0] / 2, 0.3)))
    probabilities = np.stack([1 - organ, organ]).astype(np.float32)
    return image.astype(np.float32), probabilities, truth


def _wrong(probabilities: torch.Tensor, truth: np.ndarray) -> int:
    return int(((probabilities.argmax(0).numpy() == 1) != truth).sum())


@pytest.mark.parametrize("shift, spread", [(3.0, 4.0), (2.0, 2.0), (-2.0, 4.0)])
def test_a_shifted_blurred_boundary_is_pulled_to_the_intensity_edge(shift, spread):
    image, probabilities, truth = _ball_case(shift, spread)
    before = _wrong(torch.from_numpy(probabilities), truth)
    refined = refine(torch.from_numpy(probabilities.copy()), torch.from_numpy(image), SPACING)
    after = _wrong(refined, truth)
    assert before > 1000 and after < before / 3, (before, after)
    assert torch.allclose(refined.sum(0), torch.ones(()), atol=1e-5)  # still probabilities


def test_a_perfect_prediction_stays_perfect():
    """Two organs that touch (different HU) in fat: confident correct probabilities, and
    hesitant ones (0.6 for the right class everywhere), keep every voxel's label."""
    rng = np.random.default_rng(2)
    shape = (36, 30, 20)
    x, y, z = _grid(shape)
    labels = np.zeros(shape, dtype=np.int64)
    labels[8:28, 6:24, 4:16] = 1
    labels[18:28, 6:24, 4:16] = 2
    image = np.choose(labels, [-100.0, 60.0, 150.0]) + rng.normal(0, 8, shape)
    for confidence in (1.0, 0.6):
        onehot = np.eye(3, dtype=np.float32)[labels].transpose(3, 0, 1, 2)
        probabilities = onehot * confidence + (1 - onehot) * (1 - confidence) / 2
        refined = refine(torch.from_numpy(probabilities), torch.tensor(image, dtype=torch.float32),
                         SPACING)
        assert np.array_equal(refined.argmax(0).numpy(), labels), confidence


def test_zero_iterations_change_nothing_and_an_absent_class_stays_absent():
    image, probabilities, truth = _ball_case(0.0)
    same = refine(torch.from_numpy(probabilities.copy()), torch.from_numpy(image), SPACING,
                  CRFSettings(iterations=0))
    assert torch.equal(same, torch.from_numpy(probabilities))
    three = np.concatenate([probabilities, np.zeros_like(probabilities[:1])])  # class 2: nowhere
    refined = refine(torch.from_numpy(three), torch.from_numpy(image), SPACING)
    assert not (refined.argmax(0) == 2).any()
    assert _wrong(refined[:2], truth) <= _wrong(torch.from_numpy(probabilities), truth)


@pytest.mark.parametrize("shape", [(20, 20, 1), (1, 20, 20), (2, 3, 1)])
def test_a_single_slice_and_a_tiny_volume_are_refined(shape):
    """2D models segment single slices: a grid axis of one cell must work too."""
    probabilities = torch.softmax(torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
                                  * 3, dim=0)
    refined = refine(probabilities.clone(), torch.full(shape, 40.0), (0.8, 0.8, 5.0))
    assert refined.shape == probabilities.shape
    assert torch.allclose(refined.sum(0), torch.ones(()), atol=1e-5)


def test_the_crf_estimate_counts_its_voxels_and_its_grid():
    """512 x 512 x 300 at 0.8 x 0.8 x 2 mm on a 2 mm working grid (205 x 205 x 300 voxels):
    with 10 mm and 10 HU kernels, cells 2.5 voxels wide (83 x 83 x 121 of them, counted by
    hand as floor((n - 1) / 2.5) + 2) and 52 HU bins over -200..300."""
    shape, spacing, working = (512, 512, 300), (0.8, 0.8, 2.0), (2.0, 2.0, 2.0)
    plain, grid = inference_bytes(shape, spacing, working, 14)
    assert grid == (205, 205, 300)
    with_crf, _ = inference_bytes(shape, spacing, working, 14, crf=CRFSettings())
    assert with_crf - plain == 205 * 205 * 300 * 48 + 52 * 83 * 83 * 121 * 16


def test_crf_settings_without_crf_are_refused():
    with pytest.raises(MedsegError, match="--crf-iterations set without --crf"):
        EngineOptions(crf_iterations=2)
    assert EngineOptions(crf=True, crf_appearance_hu=10.0).crf_settings.appearance_hu == 10.0
    assert EngineOptions().crf_settings is None


def _world_corners(image: nib.Nifti1Image) -> np.ndarray:
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in image.shape[:3]])))
    return nib.affines.apply_affine(image.affine, corners)


def test_infer_with_crf_keeps_the_grid_and_the_label_ids(tiny_run, tiny_dataset, tmp_path):
    scans = tiny_dataset.parent / "imagesTr"
    scan = sorted(scans.iterdir())[0]
    outputs = {}
    for kind, extra in (("plain", []), ("crf", ["--crf", "--crf-iterations", "3"])):
        result = CliRunner().invoke(main, ["infer", "--model", str(tiny_run), "--input",
                                           str(scan), "--output", str(tmp_path / kind), *extra])
        assert result.exit_code == 0, result.output
        outputs[kind] = nib.load(str(tmp_path / kind / scan.name))
    source = nib.load(str(scan))
    crf = outputs["crf"]
    assert crf.shape == source.shape
    np.testing.assert_allclose(_world_corners(crf), _world_corners(source), atol=1e-4)
    labels = {int(k) for k in __import__("json").loads(
        (tmp_path / "crf" / "labels.json").read_text())["labels"]}
    assert set(np.unique(np.asarray(crf.dataobj))) <= labels
    refused = CliRunner().invoke(main, ["infer", "--model", str(tiny_run), "--input", str(scan),
                                        "--output", str(tmp_path / "x"), "--crf-iterations", "2"])
    assert refused.exit_code != 0 and "without --crf" in refused.output
