"""Fine-tuning (`medseg train --init-from`): weights copied where they fit, output classes
matched by organ name, nnU-Net models moved into medseg's axis order, and what it buys.

Oracles: the source network's own outputs (a copied class must give the same logits), and for
nnU-Net the network class nnU-Net itself builds (dynamic_network_architectures) with the
fixture's weights (tests/data/nnunet, trained by nnU-Net)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli_here

from medseg.nets.checkpoint import save_checkpoint
from medseg.nets.registry import build_network
from medseg.training.init_from import read_init_source, transfer_weights

NNUNET_MODEL = Path(__file__).parent / "data" / "nnunet" / "model"
SOURCE_LABELS = {0: "background", 1: "liver", 2: "spleen"}
# Other ids, another spelling, one organ the source never saw.
RUN_LABELS = {0: "background", 1: "Spleen", 2: "kidneys", 3: "liver"}


def resunet(classes: int, **kwargs) -> torch.nn.Module:
    # No residual units: the last layer maps features to classes, so a copied class's logit
    # depends on copied weights alone and must equal the source's.
    return build_network("resunet", 1, classes, channels=(6, 8, 16), strides=(2, 2),
                       num_res_units=0, **kwargs)


@pytest.fixture
def source_run(tmp_path) -> Path:
    """A medseg checkpoint of a small network with random weights for SOURCE_LABELS."""
    torch.manual_seed(0)
    model = resunet(len(SOURCE_LABELS))
    config = {"labels": {str(k): v for k, v in SOURCE_LABELS.items()},
              "spacing": [3.0, 3.0, 4.0], "patch_size": [32, 32, 16],
              "intensity": {"clip": [-200, 300], "mean": 50.0, "std": 100.0},
              "model": {"name": "resunet", "kwargs": {"channels": [6, 8, 16], "strides": [2, 2],
                                                      "num_res_units": 0}}}
    save_checkpoint(tmp_path / "source" / "best.pt", model, config)
    return tmp_path / "source"


def test_classes_are_copied_by_organ_name_and_new_organs_start_fresh(source_run):
    source = read_init_source(source_run)
    original = resunet(len(SOURCE_LABELS))
    original.load_state_dict(source.state_dict)
    torch.manual_seed(1)
    model = resunet(len(RUN_LABELS))
    fresh_before = {k: v.clone() for k, v in model.state_dict().items()}
    report = transfer_weights(model, source, RUN_LABELS, resunet)
    assert report["classes"] == {"background": "background", "Spleen": "spleen",
                                 "kidneys": None, "liver": "liver"}
    assert report["tensors_fresh"] == []
    x = torch.randn(1, 1, 16, 16, 8)
    original.eval(), model.eval()
    with torch.no_grad():
        theirs, ours = original(x), model(x)
    torch.testing.assert_close(ours[:, [0, 1, 3]], theirs[:, [0, 2, 1]])
    # The new organ's output weights (the last layer, a transposed convolution: in, out, ...)
    # are the fresh network's, untouched; the other layers are the source's.
    weight, bias = "net.model.2.conv.weight", "net.model.2.conv.bias"
    torch.testing.assert_close(model.state_dict()[weight][:, 2], fresh_before[weight][:, 2])
    torch.testing.assert_close(model.state_dict()[bias][2], fresh_before[bias][2])
    first = "net.model.0.conv.weight"
    torch.testing.assert_close(model.state_dict()[first], source.state_dict[first])


def test_a_network_that_fits_nowhere_is_one_line(source_run, tmp_path):
    from medseg.errors import MedsegError

    source = read_init_source(source_run)
    with pytest.raises(MedsegError, match="none of its weights fit the run's network"):
        transfer_weights(build_network("fcn", 1, 4, channels=(4, 8)), source, RUN_LABELS,
                         lambda n: build_network("fcn", 1, n, channels=(4, 8)))


def test_an_nnunet_model_becomes_the_same_network_in_xyz_order():
    """nnU-Net's network on its own axes (the fixture's weights, built by nnU-Net's network
    class) against the fine-tuning network on x, y, z with the classes renumbered."""
    from medseg.models.nnunet.folder import read_model_folder

    nnunet = read_model_folder(NNUNET_MODEL, folds="0")
    theirs = nnunet.build_network().eval()
    theirs.load_state_dict(nnunet.weights[0])
    source = read_init_source(NNUNET_MODEL)
    assert source.network["orientation"] == "LPS"
    # The plan: spacing [5, 2, 2] and patch [32, 96, 96] along z, y, x; kernels (1, 3, 3).
    assert source.network_input["spacing"] == (2.0, 2.0, 5.0)
    assert source.network_input["patch_size"] == (96, 96, 32)
    arch = source.network["model_kwargs"]["architecture"]["arch_kwargs"]
    assert arch["kernel_sizes"][0] == [3, 3, 1] and arch["strides"][1] == [2, 2, 1]
    labels = {0: "background", 1: "stomach", 2: "liver", 3: "kidneys"}

    def network(classes):
        return build_network("nnunet", 1, classes, **source.network["model_kwargs"])

    ours = network(len(labels))
    transfer_weights(ours, source, labels, network)
    ours.eval()
    x = torch.randn(1, 1, 16, 48, 40)  # nnU-Net's axes: z, y, x
    with torch.no_grad():
        expected = theirs(x).permute(0, 1, 4, 3, 2)
        got = ours(x.permute(0, 1, 4, 3, 2))
    stomach, liver = nnunet.labels and [{v: k for k, v in nnunet.labels.items()}[n]
                                        for n in ("stomach", "liver")]
    torch.testing.assert_close(got[:, [0, 1, 2]], expected[:, [0, stomach, liver]],
                               atol=1e-4, rtol=1e-4)


def write_lps_phantoms(folder: Path, labels: dict[int, str]) -> Path:
    """Three phantoms stored as DICOM stores CT (LPS), at the nnU-Net model's spacing, with
    stomach, liver and both kidneys as one 'kidneys' organ."""
    from medseg.data.io import save_nifti
    from medseg.data.phantoms import ORGAN_ID, make_phantom

    ids = {name: i for i, name in labels.items()}
    entries = []
    for k, seed in enumerate((11, 12, 13)):
        phantom = make_phantom(seed, spacing=(2.0, 2.0, 5.0), orientation="LPS")
        label = np.zeros_like(phantom.label)
        for organ in ("stomach", "liver"):
            label[phantom.label == ORGAN_ID[organ]] = ids[organ]
        label[np.isin(phantom.label, [ORGAN_ID["right_kidney"],
                                      ORGAN_ID["left_kidney"]])] = ids["kidneys"]
        save_nifti(phantom.image, phantom.affine, folder / "imagesTr" / f"c{k}.nii.gz")
        save_nifti(label, phantom.affine, folder / "labelsTr" / f"c{k}.nii.gz")
        entries.append({"image": f"imagesTr/c{k}.nii.gz", "label": f"labelsTr/c{k}.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps({
        "labels": {str(k): v for k, v in labels.items()}, "training": entries}))
    return folder / "dataset.json"


def liver_dice_per_epoch(run: Path) -> list[float]:
    lines = (run / "log.csv").read_text().splitlines()
    column = lines[0].split(",").index("liver")
    return [float(line.split(",")[column]) for line in lines[1:]]


def test_fine_tuning_an_nnunet_model_needs_fewer_iterations_than_scratch(tmp_path):
    """The same network, settings and data: from the nnU-Net model's weights the liver is
    found after 2 iterations; from scratch it is not after 6."""
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    labels = {0: "background", 1: "stomach", 2: "liver", 3: "kidneys"}
    manifest = write_lps_phantoms(tmp_path / "data", labels)
    settings = dict(manifest=str(manifest), iters_per_epoch=2, batch_size=1, val_every=1,
                    lr=1e-3, contrast_prob=0.0)
    train(TrainConfig(output=str(tmp_path / "tuned"), init_from=str(NNUNET_MODEL), epochs=1,
                      **settings))
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    started = config["init_from"]
    assert started["kind"] == "nnunet" and started["weights"].endswith(
        "fold_0/checkpoint_final.pth")
    assert started["classes"]["kidneys"] is None and started["classes"]["liver"] == "liver"
    source = read_init_source(NNUNET_MODEL)
    train(TrainConfig(output=str(tmp_path / "scratch"), epochs=3, **source.network,
                      **source.network_input, **settings))
    tuned, scratch = liver_dice_per_epoch(tmp_path / "tuned"), liver_dice_per_epoch(
        tmp_path / "scratch")
    print("liver Dice per epoch of 2 iterations: fine-tuned", tuned, "scratch", scratch)
    assert tuned[0] >= 0.8 and max(scratch) < 0.5


def test_init_from_refusals_are_one_line(tmp_path, tiny_dataset):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli_here("train", "--manifest", tiny_dataset, "--output", tmp_path / "run",
                        "--init-from", empty)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {empty}: no checkpoint (best.pt or last.pt) in this folder; pass the run "
        "folder that `medseg train` wrote")
    proc = run_cli_here("train", "--manifest", tiny_dataset, "--output", tmp_path / "run",
                        "--network", "nnunet")
    assert proc.returncode == 2
    assert "train it with --init-from NNUNET_MODEL_FOLDER" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_fine_tuning_on_the_real_series_starts_from_what_the_model_knows(real_case, tmp_path):
    """The nnU-Net phantom model finds the real scan's liver (nnUNetv2_predict: Dice 0.75
    against TotalSegmentator's); fine-tuned on the real series for 2 iterations, it still does,
    while the organs it never learnt to find there start near zero."""
    from medseg.training.config import TrainConfig
    from medseg.training.loop import train

    train(TrainConfig(manifest=str(real_case), output=str(tmp_path / "tuned"),
                      init_from=str(NNUNET_MODEL), epochs=1, iters_per_epoch=2, batch_size=1,
                      lr=1e-3, contrast_prob=0.0))
    liver = liver_dice_per_epoch(tmp_path / "tuned")
    print("real series, liver Dice after 2 fine-tuning iterations:", liver)
    assert liver[0] >= 0.7
