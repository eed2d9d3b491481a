"""Planning: fingerprint arithmetic against hand-made data sets, and training picking it up."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_nifti

from cli import main
from medseg.planning import BYTES_PER_VOXEL_PER_CHANNEL, make_plan, patch_and_batch, target_spacing
from medseg.recipes import build_config


def test_target_spacing_is_the_median_unless_anisotropic():
    iso = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.5, 1.5, 1.2]])
    assert target_spacing(iso) == [1.5, 1.5, 1.2]
    thick = np.array([[0.8, 0.8, 5.0], [0.7, 0.7, 5.0], [0.9, 0.9, 1.0], [0.8, 0.8, 5.0]])
    planned = target_spacing(thick)
    assert planned[:2] == [0.8, 0.8]
    assert planned[2] == pytest.approx(np.percentile([5.0, 5.0, 1.0, 5.0], 10))


def test_patch_fits_the_memory_budget_and_divides_by_the_network_stride():
    patch, batch = patch_and_batch([300, 250, 200], memory_gb=4, base_channels=16, factor=16)
    assert all(p % 16 == 0 for p in patch)
    assert np.prod(patch) * batch * BYTES_PER_VOXEL_PER_CHANNEL * 16 <= 4 * 1024**3
    small, small_batch = patch_and_batch([40, 30, 20], memory_gb=4, base_channels=16, factor=16)
    assert small == [48, 32, 32] and small_batch > 2  # a small image fits whole, several at once


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
    plan = make_plan(manifest, memory_gb=1.0)
    assert plan["spacing"] == [2.0, 2.0, 2.0]
    assert plan["fingerprint"]["median_shape_at_target"] == [20.0, 16.0, 12.0]
    lo, hi = plan["intensity"]["clip"]
    assert 40 <= lo < hi <= 80  # foreground HU only, not the -1000 air
    fractions = plan["fingerprint"]["class_fraction"]
    assert fractions["organ"] == pytest.approx(480 / 3840)


def test_plan_command_writes_beside_the_manifest_and_train_uses_it(tmp_path):
    manifest = _dataset(tmp_path, [(1.0, 1.0, 2.0), (2.0, 2.0, 2.0), (3.0, 3.0, 2.0)])
    result = CliRunner().invoke(main, ["plan", "--manifest", str(manifest), "--memory-gb", "1"])
    assert result.exit_code == 0, result.output
    planned = json.loads((tmp_path / "plan.json").read_text())
    config = build_config(None, {"manifest": str(manifest), "output": "x", "batch_size": 1})
    assert list(config.spacing) == planned["spacing"] and config.batch_size == 1  # CLI wins
    assert config.intensity == planned["intensity"] and config.plan.endswith("plan.json")
