"""Checkpoints: self-describing round trip, and no code execution on load."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.nets.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from medseg.nets.registry import build_network


def test_round_trip_restores_weights_and_settings(tmp_path):
    model = build_network("unet3d", 1, 3, channels=(4, 8), strides=(2,))
    config = {"labels": {"0": "background", "1": "liver", "2": "spleen"}, "spacing": [3, 3, 3]}
    save_checkpoint(tmp_path / "best.pt", model, config, epoch=4)
    payload = load_checkpoint(tmp_path)  # a run folder resolves to best.pt
    assert payload["config"] == config and payload["epoch"] == 4
    restored = build_network("unet3d", 1, 3, channels=(4, 8), strides=(2,))
    restored.load_state_dict(payload["state_dict"])
    x = torch.randn(1, 1, 8, 8, 8)
    model.eval(), restored.eval()
    torch.testing.assert_close(model(x), restored(x))


def test_run_folder_falls_back_to_last_and_reports_missing(tmp_path):
    with pytest.raises(MedsegError, match="no checkpoint"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == tmp_path / "last.pt"


class _Payload:
    """Unpickling this would create a file: the attack a checkpoint loader must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "config": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(MedsegError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_or_foreign_files_are_clear_errors(tmp_path):
    model = build_network("unet3d", 1, 2, channels=(4, 8), strides=(2,))
    save_checkpoint(tmp_path / "good.pt", model, {})
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsegError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(MedsegError, match="not a medseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_medseg_0_1_checkpoint_still_predicts(tmp_path):
    # 0.1 saved MONAI's U-Net unwrapped, with no spatial_dims or context_slices in its config.
    from medseg.models.open import open_model
    from medseg.models.options import EngineOptions
    from medseg.nets.registry import monai_residual_unet

    bare = monai_residual_unet(3, 1, 2, channels=(4, 8), strides=(2,))
    config = {"model": {"name": "unet3d", "kwargs": {"channels": [4, 8], "strides": [2]},
                        "in_channels": 1},
              "labels": {"0": "background", "1": "liver"}, "spacing": [2.0, 2.0, 2.0],
              "patch_size": [8, 8, 8], "intensity": {"clip": [-100.0, 100.0], "mean": 0.0,
                                                     "std": 50.0}}
    save_checkpoint(tmp_path / "best.pt", bare, config)
    predictor = open_model(tmp_path, EngineOptions(device="cpu"))
    x = torch.randn(1, 1, 8, 8, 8)
    bare.eval()
    with torch.no_grad():
        torch.testing.assert_close(predictor.network(x), bare(x))


def test_a_file_that_is_no_checkpoint_is_called_that_not_pickled_code(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, not a checkpoint\n")
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(tmp_path / "array.pt")
    for name in ("notes.pt", "array.pt"):
        with pytest.raises(MedsegError, match=f"{name}: not a checkpoint \\(torch.save writes "
                                              "zip archives"):
            load_checkpoint(tmp_path / name)
