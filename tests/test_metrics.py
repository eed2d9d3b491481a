"""Per-organ metrics against hand counts, analytic surface distances and MONAI itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from medseg.data.geometry import voxel_spacing, voxel_volume_ml
from medseg.evaluation.metrics import (
    case_metrics,
    label_boxes,
    organ_metrics,
)


def metrics(ref, pred, spacing=(1.0, 1.0, 1.0), tolerance=2.0, voxel_ml=0.001) -> dict:
    return organ_metrics(np.asarray(ref, bool), np.asarray(pred, bool), spacing, voxel_ml,
                         tolerance)


def test_dice_and_iou_of_overlapping_cubes_match_hand_counts():
    ref = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(ref)
    ref[0:10, 0:10, 0:10] = True  # 1000 voxels
    pred[5:15, 0:10, 0:10] = True  # 1000 voxels, 500 shared
    m = metrics(ref, pred)
    assert m["dice"] == pytest.approx(2 * 500 / 2000)
    assert m["iou"] == pytest.approx(500 / 1500)
    assert (m["ref_voxels"], m["pred_voxels"], m["status"]) == (1000, 1000, "present")
    inner = np.zeros_like(ref)
    inner[12:16, 12:16, 12:14] = True  # 32 voxels inside a 64-voxel cube
    outer = np.zeros_like(ref)
    outer[12:16, 12:16, 12:16] = True
    assert metrics(outer, inner)["dice"] == pytest.approx(2 * 32 / 96)
    assert metrics(outer, inner)["iou"] == pytest.approx(32 / 64)


def test_volumes_use_the_voxel_size_of_an_oblique_anisotropic_affine():
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    assert voxel_spacing(affine) == pytest.approx((0.8, 0.9, 2.5))
    assert voxel_volume_ml(affine) == pytest.approx(0.8 * 0.9 * 2.5 / 1000)
    ref = np.zeros((10, 10, 10), bool)
    ref[:5] = True  # 500 voxels
    pred = np.zeros_like(ref)
    pred[:4] = True  # 400 voxels
    m = metrics(ref, pred, voxel_ml=voxel_volume_ml(affine))
    assert m["ref_volume_ml"] == pytest.approx(500 * 1.8e-3)
    assert m["volume_diff_ml"] == pytest.approx(-100 * 1.8e-3)


def ball(shape, spacing, radius_mm) -> np.ndarray:
    """A ball of radius_mm around the volume centre, sampled at voxel centres."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2) <= radius_mm


@pytest.mark.parametrize("spacing, shape", [((0.5, 0.5, 0.5), (64, 64, 64)),
                                            ((0.5, 0.5, 1.25), (64, 64, 26))])
def test_concentric_spheres_are_as_far_apart_as_their_radii(spacing, shape):
    inner, outer = ball(shape, spacing, 8.0), ball(shape, spacing, 11.0)  # 3 mm apart
    tight = metrics(inner, outer, spacing, tolerance=1.5)
    loose = metrics(inner, outer, spacing, tolerance=4.5)
    # Boundary voxels sit up to one voxel off the true sphere: allow one slice of error.
    assert tight["hd95_mm"] == pytest.approx(3.0, abs=max(spacing))
    assert tight["nsd"] < 0.05  # every boundary point is ~3 mm away: none within 1.5 mm
    assert loose["nsd"] == pytest.approx(1.0)
    assert loose["hd95_mm"] == tight["hd95_mm"]


def test_shifted_cube_on_thick_slices_is_measured_in_millimetres():
    spacing = (1.0, 1.0, 3.0)
    ref = np.zeros((50, 50, 20), bool)
    ref[10:40, 10:40, 5:15] = True  # a 30 mm cube
    pred = np.zeros_like(ref)
    pred[10:40, 10:40, 7:17] = True  # moved 2 slices = 6 mm along z
    m = metrics(ref, pred, spacing, tolerance=2.0)
    # A top face (1/6 of the surface) is 6 mm from the other cube's; nothing is farther.
    assert m["hd95_mm"] == pytest.approx(6.0)
    # Surface within 2 mm, per cube: side faces that coincide 4L(L-d), the 2 mm band of the
    # side faces beyond the other cube 4L*2, and the 2 mm rim of the buried face L^2-(L-4)^2;
    # out of 6L^2. Weighting by area matters: counting boundary voxels would give about 0.4.
    side, shift, tol = 30.0, 6.0, 2.0
    expected = (4 * side * (side - shift) + 4 * side * tol + side**2 - (side - 2 * tol) ** 2) / (
        6 * side**2)
    assert m["nsd"] == pytest.approx(expected, abs=0.01)
    assert metrics(ref, pred, spacing, tolerance=6.0)["nsd"] == pytest.approx(1.0)
    across = np.zeros_like(ref)
    across[12:42, 10:40, 5:15] = True  # moved 2 voxels = 2 mm in-plane instead
    assert metrics(ref, across, spacing)["hd95_mm"] == pytest.approx(2.0)


def test_empty_organ_policy():
    empty = np.zeros((6, 6, 6), bool)
    organ = empty.copy()
    organ[2:4, 2:4, 2:4] = True
    both = metrics(empty, empty)
    assert both["status"] == "both_empty"
    assert all(math.isnan(both[k]) for k in ("dice", "iou", "hd95_mm", "nsd"))
    assert both["volume_diff_ml"] == 0.0
    for ref, pred, status in ((organ, empty, "pred_empty"), (empty, organ, "ref_empty")):
        one = metrics(ref, pred)
        assert one["status"] == status
        assert (one["dice"], one["iou"], one["nsd"]) == (0.0, 0.0, 0.0)
        assert math.isnan(one["hd95_mm"])
        assert abs(one["volume_diff_ml"]) == pytest.approx(8 * 0.001)


def random_labels(rng, shape, organs: int) -> np.ndarray:
    """Blobby random label volume: smoothed noise, one channel per organ, argmax above a level."""
    fields = gaussian_filter(rng.normal(size=(organs + 1, *shape)), sigma=(0, 2, 2, 1.5))
    fields[0] = 0.08  # background wherever no organ field is high enough
    return np.argmax(fields, axis=0).astype(np.uint8)


@pytest.mark.filterwarnings("ignore:the prediction of class 4 is all 0")
@pytest.mark.parametrize("seed", [0, 1])
def test_bounding_box_metrics_equal_monai_on_the_full_volume(seed):
    from monai.metrics import (
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
    )

    rng = np.random.default_rng(seed)
    spacing, organs = (0.8, 1.1, 2.5), 4
    ref = random_labels(rng, (40, 36, 20), organs)
    pred = ref.copy()
    noise = random_labels(rng, ref.shape, organs)
    changed = rng.random(ref.shape) < 0.15
    pred[changed] = noise[changed]
    pred[pred == 4] = 0  # organ 4: reference only
    rows = case_metrics(ref, pred, [(str(c), c, c) for c in range(1, organs + 1)], spacing,
                        0.001, 3.0)

    def onehot(a):
        return torch.nn.functional.one_hot(torch.from_numpy(a).long(), organs + 1).permute(
            3, 0, 1, 2)[None].bool()

    y_pred, y = onehot(pred), onehot(ref)
    monai = {
        "dice": compute_dice(y_pred, y, include_background=False)[0],
        "iou": compute_iou(y_pred, y, include_background=False)[0],
        "hd95_mm": compute_hausdorff_distance(y_pred, y, percentile=95, spacing=list(spacing))[0],
        "nsd": compute_surface_dice(y_pred, y, [3.0] * organs, spacing=list(spacing),
                                    use_subvoxels=True)[0],
    }
    assert [r["status"] for r in rows] == ["present"] * 3 + ["pred_empty"]
    for metric, values in monai.items():
        ours = np.array([r[metric] for r in rows[:3]])
        np.testing.assert_allclose(ours, values[:3].numpy(), rtol=1e-5, err_msg=metric)
        assert 0 < ours.min()  # a real comparison, not 0 == 0
    assert rows[3]["dice"] == monai["dice"][3] == 0 and rows[3]["nsd"] == monai["nsd"][3] == 0
    assert math.isnan(rows[3]["hd95_mm"]) and math.isnan(monai["hd95_mm"][3])


def test_label_boxes_are_the_same_for_fortran_ordered_volumes():
    volume = random_labels(np.random.default_rng(5), (20, 16, 12), 3)
    fortran = np.asfortranarray(volume)
    boxes = label_boxes(volume)
    assert label_boxes(fortran) == boxes and len(boxes) == 3
    for label, box in boxes.items():
        inside = np.argwhere(volume == label)
        assert [(s.start, s.stop) for s in box] == list(zip(inside.min(0), inside.max(0) + 1))
