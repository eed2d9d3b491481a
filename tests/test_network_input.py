"""One definition of the network's input: training and inference pad, normalise and grid alike."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_nifti

from medseg.data.network_input import AIR_HU, NetworkInput
from medseg.data.transforms import RandOrganContrastd, training_cache_transforms
from medseg.models.medseg_run import MedsegPredictor
from medseg.models.open import open_model
from medseg.models.options import EngineOptions

# Hand-computed: -1024 HU is clipped to -900, then (-900 - 50) / 200 = -4.75.
INTENSITY = {"clip": [-900.0, 400.0], "mean": 50.0, "std": 200.0}
AIR_NORMALISED = -4.75


def thin_case(tmp_path, slices: int = 3):
    """A 12 x 10 x `slices` scan at 4 mm: 40 HU tissue with air along one side, an organ
    (label 1) in its middle."""
    image = np.full((12, 10, slices), 40, np.int16)
    image[:2] = -1000
    label = np.zeros((12, 10, slices), np.uint8)
    label[4:8, 3:7, :] = 1
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    return {"image": str(write_nifti(tmp_path / "image.nii.gz", image, affine)),
            "label": str(write_nifti(tmp_path / "label.nii.gz", label, affine))}


class Recorder(torch.nn.Module):
    """Remembers the windows it is shown; predicts background everywhere."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return torch.zeros(x.shape[0], 2, *x.shape[2:])


def test_padding_is_air_normalised_by_hand():
    spec = NetworkInput((4.0, 4.0, 4.0), INTENSITY, (8, 8, 8))
    assert spec.pad_value == pytest.approx(AIR_NORMALISED)
    normalised = spec.normalize()({"image": torch.full((1, 1, 1, 1), AIR_HU)})["image"]
    assert float(normalised) == pytest.approx(AIR_NORMALISED)
    # Checkpoints from before padding was defined keep what inference did for them.
    legacy = NetworkInput.from_config({"spacing": [4, 4, 4], "intensity": INTENSITY,
                                       "patch_size": [8, 8, 8], "model": {}})
    assert legacy.padding == "zero" and legacy.pad_value == 0.0


def test_training_and_inference_pad_a_thin_scan_with_the_same_values(tmp_path):
    """3 slices, patch 8: training's cached case and the sliding window's input both show 5
    slices of normalised air beyond the scan; the padded label is background."""
    spec = NetworkInput((4.0, 4.0, 4.0), INTENSITY, (8, 8, 8))
    cached = training_cache_transforms(spec, num_classes=2)(thin_case(tmp_path))
    image, label = cached["image"][0], cached["label"][0]
    assert tuple(image.shape) == (12, 10, 8) and cached["working_shape"] == [12, 10, 3]
    padded = (image == AIR_HU).all(dim=(0, 1))
    assert int(padded.sum()) == 5 and not label[..., padded].any()
    trained_pad = spec.normalize()({"image": cached["image"]})["image"][0][..., padded]

    recorder = Recorder()
    predictor = MedsegPredictor.for_network(recorder, spec, {0: "background", 1: "organ"},
                                            EngineOptions(device="cpu"), torch.device("cpu"))
    scan = spec.working_grid()[0]({"image": _loaded(thin_case(tmp_path)["image"])})["image"]
    predictor.probabilities(scan)
    window = recorder.seen[0][0, 0]
    assert tuple(window.shape) == (8, 8, 8)
    inferred_pad = window[..., (window == window.min()).all(dim=(0, 1))]
    assert inferred_pad.shape[-1] == 5
    assert torch.unique(trained_pad).tolist() == torch.unique(inferred_pad).tolist() == \
        [pytest.approx(AIR_NORMALISED)]


def _loaded(path):
    from medseg.data.io import load_scan

    return load_scan(path)


def test_2p5d_training_gives_end_slices_the_neighbours_inference_gives_them(tmp_path):
    """K = 2 context slices: training pads 2 air slices beyond each end, and SliceWise feeds
    the end slices air neighbours (legacy checkpoints: repeated end slices)."""
    from medseg.nets.registry import volume_network

    spec = NetworkInput((4.0, 4.0, 4.0), INTENSITY, (8, 8, 8), spatial_dims=2, context_slices=2)
    cached = training_cache_transforms(spec, num_classes=2)(thin_case(tmp_path, slices=6))
    assert cached["image"].shape[-1] == 10
    ends = torch.cat([cached["image"][..., :2], cached["image"][..., -2:]], dim=-1)
    assert (ends == AIR_HU).all()

    conv = torch.nn.Conv2d(5, 1, 1, bias=False)
    torch.nn.init.constant_(conv.weight, 0.0)
    with torch.no_grad():
        conv.weight[0, 0] = 1.0  # outputs the slice two below
    volume = torch.arange(6.0).expand(1, 1, 2, 2, 6)
    air = volume_network(conv, 2, 2, spec.end_slice_padding)(volume)
    assert air[0, 0, 0, 0].tolist() == [AIR_NORMALISED, AIR_NORMALISED, 0, 1, 2, 3]
    legacy = volume_network(conv, 2, 2, None)(volume)
    assert legacy[0, 0, 0, 0].tolist() == [0, 0, 0, 1, 2, 3]


def test_checkpoints_carry_the_input_definition(tiny_run):
    from medseg.nets.checkpoint import load_checkpoint

    config = load_checkpoint(tiny_run / "best.pt")["config"]
    spec = NetworkInput.from_config(config)
    assert config["padding"] == "air" and spec.padding == "air"
    assert spec == open_model(tiny_run, EngineOptions(device="cpu")).spec
    assert NetworkInput.from_config({**config, **spec.to_config()}) == spec


def test_organ_contrast_shifts_each_organ_by_its_own_offset_and_leaves_the_rest():
    label = torch.zeros(1, 6, 6, 6, dtype=torch.uint8)
    label[0, :2], label[0, 4:] = 1, 2
    image = torch.full((1, 6, 6, 6), 40.0)
    shift = RandOrganContrastd(prob=1.0, offsets_hu=(-150.0, 250.0))
    shift.set_random_state(seed=3)
    out = shift({"image": image, "label": label})["image"]
    offsets = [torch.unique(out[label == organ] - 40.0) for organ in (1, 2)]
    assert all(len(o) == 1 and -150 <= float(o) <= 250 for o in offsets)
    assert float(offsets[0]) != float(offsets[1])
    assert torch.equal(out[label == 0], image[label == 0])
    never = RandOrganContrastd(prob=0.0)({"image": image, "label": label})["image"]
    assert torch.equal(never, image)


def test_a_label_stored_in_another_axis_order_is_the_same_grid(tmp_path):
    """A DICOM series reads as LPS, its NIfTI mask may be stored LAS (TotalSegmentator's):
    the same voxel centres. A shifted grid is still refused."""
    from medseg.data.scan_checks import check_same_grid
    from medseg.errors import MedsegError

    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-100, 20, 5]
    image = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), affine)
    flipped = image.as_reoriented(np.array([[1, 1], [0, -1], [2, 1]]))  # y first, x flipped
    assert flipped.shape == (5, 6, 4)
    check_same_grid(image.shape, image.affine, flipped.shape, flipped.affine, "i", "l")
    shifted = flipped.affine.copy()
    shifted[0, 3] += 0.8
    with pytest.raises(MedsegError, match="label affine differs"):
        check_same_grid(image.shape, image.affine, flipped.shape, shifted, "i", "l")
