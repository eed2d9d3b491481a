"""Planning: fingerprint arithmetic against hand-made data sets, and training picking it up."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_nifti

from cli import main
from medseg.training.planning import (
    BYTES_PER_VOXEL_PER_CHANNEL,
    axis_strides,
    cpu_spacing,
    ct_normalization,
    make_plan,
    patch_and_strides,
    pooling_strides,
    target_spacing,
)
from medseg.training.recipes import build_config


def test_target_spacing_is_the_median_unless_anisotropic():
    iso = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.5, 1.5, 1.2]])
    assert target_spacing(iso) == [1.5, 1.5, 1.2]
    thick = np.array([[0.8, 0.8, 5.0], [0.7, 0.7, 5.0], [0.9, 0.9, 1.0], [0.8, 0.8, 5.0]])
    planned = target_spacing(thick)
    assert planned[:2] == [0.8, 0.8]
    assert planned[2] == pytest.approx(np.percentile([5.0, 5.0, 1.0, 5.0], 10))


def test_poolings_follow_nnunets_rule_per_axis():
    # A thin slab: the 12-slice axis is pooled once (6 < 2 x 4 stops it), the others four times.
    assert pooling_strides((128, 128, 12), (3.0, 3.0, 3.0)) == [[2, 2, 2], [2, 2, 1], [2, 2, 1],
                                                                [2, 2, 1]]
    # 4 mm slices at 1 mm in-plane: z waits until the in-plane spacing has caught up (2 -> 4).
    assert pooling_strides((200, 200, 50), (1.0, 1.0, 4.0)) == [[2, 2, 1], [2, 2, 1], [2, 2, 2],
                                                                [2, 2, 2]]
    assert axis_strides([[2, 2, 1], [2, 2, 1], [2, 2, 2]]) == [8, 8, 2]


def test_patch_never_exceeds_the_median_scan_and_divides_by_its_strides():
    # The shared real case at 3 mm: 168 x 168 x 13.4 voxels. Rounding up would give 16 slices.
    patch, levels = patch_and_strides([167.8, 167.8, 13.4], [3.0, 3.0, 3.0], 2 * 80 * 64 * 48)
    assert patch[2] == 12 and all(p <= m for p, m in zip(patch, [167.8, 167.8, 13.4]))
    assert all(p % s == 0 for p, s in zip(patch, axis_strides(levels)))
    assert np.prod(patch) * 2 <= 2 * 80 * 64 * 48
    gpu, _ = patch_and_strides([300, 250, 200], [1.0, 1.0, 1.0], 4 * 1024**3 / (64 * 32))
    assert np.prod(gpu) * 2 * BYTES_PER_VOXEL_PER_CHANNEL * 32 <= 4 * 1024**3


def test_cpu_plan_coarsens_the_finest_axes_until_a_patch_covers_half_the_median_scan():
    # 500 x 500 x 40 mm at 1 x 1 x 2 mm; a patch may hold 245,760 voxels, so the scan may hold
    # twice that. Floors 1, 1.25, ... 2.44 leave too many voxels (2.44: 204.8^2 x 16.4 =
    # 687k); 1.25^5 = 3.05 mm gives 163.8^2 x 13.1 = 352k.
    assert cpu_spacing([1.0, 1.0, 2.0], [500.0, 500.0, 40.0], 491_520) == [3.052] * 3
    # A coarse data set is left as it is.
    assert cpu_spacing([4.0, 4.0, 5.0], [300.0, 250.0, 200.0], 491_520) == [4.0, 4.0, 5.0]


def test_ct_normalization_keeps_contrast_enhanced_vessels_below_the_clip():
    voxels = np.repeat([40.0, 60.0, 80.0], 480)  # p0.5 = 40, p99.5 = 80
    plain = ct_normalization(voxels, ceiling_hu=None)
    assert plain["clip"] == [40.0, 80.0]
    assert ct_normalization(voxels)["clip"] == [40.0, 500.0]  # an arterial aorta stays bright
    assert ct_normalization(voxels)["mean"] == pytest.approx(60.0)
    assert ct_normalization(voxels)["std"] == pytest.approx(np.sqrt(800 / 3))
    assert ct_normalization(np.full(10, 30.0))["std"] == 1e-3  # floored, not zero


def _dataset(tmp_path, spacings):
    entries = []
    for i, spacing in enumerate(spacings):
        image = np.full((20, 16, 12), -1000, np.int16)
        label = np.zeros((20, 16, 12), np.uint8)
        image[5:15, 4:12, 3:9] = 40 + i * 20  # organ HU 40, 60, ...
        label[5:15, 4:12, 3:9] = 1
        affine = np.diag([*spacing, 1.0])
        write_nifti(tmp_path / f"i{i}.nii.gz", image, affine)
        write_nifti(tmp_path / f"l{i}.nii.gz", label, affine)
        entries.append({"image": f"i{i}.nii.gz", "label": f"l{i}.nii.gz"})
    manifest = tmp_path / "dataset.json"
    manifest.write_text(json.dumps({"labels": {"0": "background", "1": "organ"},
                                    "training": entries}))
    return manifest


def test_plan_of_a_hand_made_data_set(tmp_path):
    manifest = _dataset(tmp_path, [(1.0, 1.0, 2.0), (2.0, 2.0, 2.0), (3.0, 3.0, 2.0)])
    plan = make_plan(manifest)  # on a CPU, where 2 mm needs no coarsening for 40 x 32 x 24 mm
    assert plan["spacing"] == [2.0, 2.0, 2.0]
    assert plan["fingerprint"]["median_shape_at_target"] == [20.0, 16.0, 12.0]
    # (20, 16, 12): all axes pooled once, then x and y once more; 5 x 4 x 6 stops there.
    assert plan["model_kwargs"] == {"channels": [16, 32, 64], "strides": [[2, 2, 2], [2, 2, 1]]}
    assert plan["patch_size"] == [20, 16, 12] and plan["batch_size"] == 2
    # Foreground HU only (40, 60, 80 in equal parts), not the -1000 air; the clip's top is the
    # contrast ceiling.
    assert plan["intensity"]["clip"] == [40.0, 500.0]
    assert plan["intensity"]["mean"] == pytest.approx(60.0)
    fractions = plan["fingerprint"]["class_fraction"]
    assert fractions["organ"] == pytest.approx(480 / 3840)


def test_a_gpu_plan_keeps_nnunets_spacing_and_fills_the_memory_budget(tmp_path):
    manifest = _dataset(tmp_path, [(0.5, 0.5, 1.0), (0.5, 0.5, 1.0), (0.5, 0.5, 1.0)])
    cpu = make_plan(manifest, device="cpu")
    gpu = make_plan(manifest, device="cuda", memory_gb=1.0)
    assert gpu["spacing"] == [0.5, 0.5, 1.0] and gpu["model_kwargs"]["channels"][0] == 32
    # 20 x 16 x 12 voxels: the whole median scan is one patch, and 1 GB holds 8 of them.
    assert gpu["patch_size"] == [20, 16, 12] and gpu["batch_size"] == 8
    assert cpu["model_kwargs"]["channels"][0] == 16 and cpu["batch_size"] == 2


def test_plan_command_writes_beside_the_manifest_and_train_uses_it(tmp_path):
    manifest = _dataset(tmp_path, [(1.0, 1.0, 2.0), (2.0, 2.0, 2.0), (3.0, 3.0, 2.0)])
    result = CliRunner().invoke(main, ["plan", "--manifest", str(manifest), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "plan: spacing 2x2x2 mm; patch 20x16x12" in result.output
    planned = json.loads((tmp_path / "plan.json").read_text())
    config = build_config(None, {"manifest": str(manifest), "output": "x", "batch_size": 1})
    assert list(config.spacing) == planned["spacing"] and config.batch_size == 1  # CLI wins
    assert config.intensity == planned["intensity"] and config.plan.endswith("plan.json")


def test_train_without_a_plan_plans_by_itself_and_says_so(tmp_path):
    manifest = _dataset(tmp_path, [(1.0, 1.0, 2.0), (2.0, 2.0, 2.0), (3.0, 3.0, 2.0)])
    result = CliRunner().invoke(main, ["train", "--manifest", str(manifest), "--output",
                                       str(tmp_path / "run"), "--epochs", "1",
                                       "--iters-per-epoch", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "plan: spacing 2x2x2 mm; patch 20x16x12" in result.output
    written = json.loads((tmp_path / "run" / "plan.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["patch_size"] == config["patch_size"] == [20, 16, 12]
    assert config["train"]["model_kwargs"]["strides"] == [[2, 2, 2], [2, 2, 1]]


def test_the_plans_network_is_only_for_its_own_model_and_never_over_given_channels():
    from medseg.training.config import TrainConfig
    from medseg.training.planning import apply_plan

    plan = {"spacing": [3, 3, 3], "patch_size": [96, 96, 12], "batch_size": 2,
            "intensity": {"clip": [-1000, 500], "mean": 0, "std": 1}, "model": "unet3d",
            "model_kwargs": {"channels": [16, 32], "strides": [[2, 2, 1]]}}
    default = apply_plan(TrainConfig("m.json", "out"), plan)
    assert default.patch_size == (96, 96, 12)
    assert default.model_kwargs == {"channels": [16, 32, 64, 128, 256],
                                    "strides": [[2, 2, 2], [2, 2, 1], [2, 2, 1], [2, 2, 1]]}
    other = apply_plan(TrainConfig("m.json", "out", model="fcn", spacing=(4, 4, 4)), plan)
    assert other.model_kwargs == {} and other.spacing == (4, 4, 4)
    # A patch set by hand gets the topology planned for it: 8 slices are pooled once.
    thin = apply_plan(TrainConfig("m.json", "out", patch_size=(64, 64, 8)), plan)
    assert thin.model_kwargs["strides"] == [[2, 2, 2], [2, 2, 1], [2, 2, 1], [2, 2, 1]]
    own = apply_plan(TrainConfig("m.json", "out", model_kwargs={"channels": (8, 16, 32)}), plan)
    assert own.model_kwargs == {"channels": (8, 16, 32)}


def test_a_missing_or_broken_plan_is_one_clear_line(tmp_path):
    manifest = _dataset(tmp_path, [(2.0, 2.0, 2.0)])
    broken = tmp_path / "broken.json"
    broken.write_text("{spacing: 3")
    for plan, message in ((tmp_path / "none.json", "none.json: plan not found; make one with "
                                                   "`medseg plan"),
                          (broken, "broken.json: not valid JSON")):
        result = CliRunner().invoke(main, ["train", "--manifest", str(manifest), "--output",
                                           str(tmp_path / "run"), "--plan", str(plan)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_plan_file_lacking_settings_is_completed_from_the_data(tmp_path):
    manifest = _dataset(tmp_path, [(2.0, 2.0, 2.0), (2.0, 2.0, 2.0)])
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"spacing": [4.0, 4.0, 4.0]}))
    result = CliRunner().invoke(main, ["train", "--manifest", str(manifest), "--output",
                                       str(tmp_path / "run"), "--plan", str(partial),
                                       "--epochs", "1", "--iters-per-epoch", "1"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["spacing"] == [4.0, 4.0, 4.0]  # the file's
    assert config["patch_size"] and config["intensity"]["clip"] == [40.0, 500.0]  # the data's


def test_ras_shape_and_spacing_are_read_off_the_affine_as_nibabel_reorients():
    import nibabel as nib

    from medseg.data.geometry import ras_shape_and_spacing

    affine = np.array([[0.0, 0.0, -2.5, 10], [-0.8, 0.0, 0.0, 5], [0.0, 0.7, 0.0, -3],
                       [0, 0, 0, 1]])  # stored axes: A->P, S, R->L
    image = nib.Nifti1Image(np.zeros((30, 20, 10), np.int16), affine)
    canonical = nib.as_closest_canonical(image)  # the oracle: nibabel moves the data
    shape, spacing = ras_shape_and_spacing(image.shape, affine)
    assert shape == list(canonical.shape)
    np.testing.assert_allclose(spacing, canonical.header.get_zooms())
