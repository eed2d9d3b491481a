"""Inference options: TTA, ensembles, precision, post-processing, probabilities, scale-out."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_checkpoint

from cli import main
from medseg.data.io import load_scan
from medseg.errors import MedsegError
from medseg.inference.postprocess import clean_components
from medseg.models.open import open_model
from medseg.models.options import EngineOptions

LABELS = {"0": "background", "1": "bright", "2": "dark"}


class Pointwise(torch.nn.Module):
    """Logits from each voxel alone: commutes with flips, so TTA must not change its output."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), x, -x], dim=1) * 3


class Gradient(torch.nn.Module):
    """Logits from a one-sided difference along y: mirroring along y changes its answer."""

    def forward(self, x):
        d = torch.zeros_like(x)
        d[:, :, :, 1:] = x[:, :, :, 1:] - x[:, :, :, :-1]
        return torch.cat([torch.zeros_like(x), d, -d], dim=1) * 3


def make_checkpoint(path, labels=LABELS, spacing=(2.0, 2.0, 2.0)):
    return tiny_checkpoint(path, labels=labels, spacing=list(spacing))


@pytest.fixture
def scan(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.normal(0, 300, (30, 26, 20))).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([1.5, 1.5, 2.0, 1.0])), str(tmp_path / "s.nii.gz"))
    return load_scan(tmp_path / "s.nii.gz")


def probabilities(checkpoints, network, scan, **options):
    predictor = open_model(checkpoints, EngineOptions(device="cpu", **options))
    for member in predictor.members:
        member.network = network
    return predictor.probabilities(predictor.resample_to_working_grid(scan))


def test_tta_leaves_a_flip_symmetric_model_unchanged(tmp_path, scan):
    ckpt = make_checkpoint(tmp_path / "a.pt")
    plain = probabilities(ckpt, Pointwise(), scan)
    mirrored = probabilities(ckpt, Pointwise(), scan, tta=True)
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=1e-5)


def test_tta_really_mirrors(tmp_path, scan):
    ckpt = make_checkpoint(tmp_path / "a.pt")
    plain = probabilities(ckpt, Gradient(), scan)
    mirrored = probabilities(ckpt, Gradient(), scan, tta=True)
    assert (mirrored - plain).abs().max() > 0.1


def test_ensemble_averages_member_probabilities(tmp_path, scan):
    a, b = make_checkpoint(tmp_path / "a.pt"), make_checkpoint(tmp_path / "b.pt")
    predictor = open_model([a, b], EngineOptions(device="cpu"))
    predictor.members[0].network, predictor.members[1].network = Pointwise(), Gradient()
    image = predictor.resample_to_working_grid(scan)
    both = predictor.probabilities(image)
    singles = [probabilities(a, net, scan) for net in (Pointwise(), Gradient())]
    torch.testing.assert_close(both, (singles[0] + singles[1]) / 2, atol=1e-5, rtol=1e-5)


def test_ensemble_members_must_agree_on_labels_and_spacing(tmp_path):
    a = make_checkpoint(tmp_path / "a.pt")
    other_labels = make_checkpoint(tmp_path / "b.pt", labels={"0": "background", "1": "x"})
    other_grid = make_checkpoint(tmp_path / "c.pt", spacing=(3.0, 3.0, 3.0))
    with pytest.raises(MedsegError, match="label map differs"):
        open_model([a, other_labels], EngineOptions(device="cpu"))
    with pytest.raises(MedsegError, match="spacing"):
        open_model([a, other_grid], EngineOptions(device="cpu"))


def test_bf16_on_cpu_agrees_with_fp32(tiny_run, tiny_dataset):
    scan = load_scan(sorted((tiny_dataset.parent / "imagesTr").iterdir())[0])
    fp32, _ = open_model(tiny_run, EngineOptions(device="cpu", precision="fp32")).predict(scan)
    bf16, _ = open_model(tiny_run, EngineOptions(device="cpu", precision="bf16")).predict(scan)
    assert (fp32 == bf16).mean() > 0.97


def test_keep_largest_and_min_size_remove_the_right_components():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[1:4, 1:4, 1:4] = 1  # organ 1, 27 voxels
    mask[10:12, 10:12, 10:12] = 1  # organ 1, 8 voxels, separate
    mask[15:17, 1:3, 1:3] = 2  # organ 2, 8 voxels
    largest = clean_components(mask, keep_largest=True)
    assert (largest == 1).sum() == 27 and (largest == 2).sum() == 8
    no_small = clean_components(mask, min_voxels=10)
    assert (no_small == 1).sum() == 27 and (no_small == 2).sum() == 0
    assert clean_components(mask) is mask  # nothing asked, nothing done


def test_probabilities_are_written_on_the_scan_grid_and_agree_with_the_mask(tiny_run,
                                                                             tiny_dataset,
                                                                             tmp_path):
    scan = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    result = CliRunner().invoke(main, ["infer", "--model", str(tiny_run), "--input", str(scan),
                                       "--output", str(tmp_path), "--save-probabilities"])
    assert result.exit_code == 0, result.output
    name = scan.name.replace(".nii.gz", "")
    probs = nib.load(str(tmp_path / f"{name}_probabilities.nii.gz"))
    mask = np.asarray(nib.load(str(tmp_path / scan.name)).dataobj)
    assert probs.shape == (*mask.shape, 10) and probs.get_data_dtype() == np.uint8
    np.testing.assert_allclose(probs.affine, nib.load(str(scan)).affine, atol=1e-6)
    p = np.asarray(probs.dataobj).astype(int)
    assert np.all(np.abs(p.sum(-1) - 255) <= 10)  # rounded probabilities sum to 1
    chosen = np.take_along_axis(p, mask[..., None].astype(int), -1)[..., 0]
    assert np.all(chosen >= p.max(-1) - 1)  # the mask's class is the most probable, +-rounding


def test_slightly_skewed_header_is_repaired_with_a_warning_and_output_keeps_it(tiny_run,
                                                                               tmp_path):
    affine = np.diag([4.0, 4.0, 6.0, 1.0])
    affine[0, 1] = 4.0 * 0.004  # axes 0.2 degrees off perpendicular
    image = np.full((40, 30, 20), -800, np.int16)
    image[10:30, 8:22, 5:15] = 60
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "skew.nii.gz"))
    proc = subprocess.run([sys.executable, "-m", "cli", "infer", "--model", str(tiny_run),
                           "--input", str(tmp_path / "skew.nii.gz"), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True,
                          errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning: " in proc.stderr and "repaired" in proc.stderr
    out = nib.load(str(tmp_path / "out" / "skew.nii.gz"))
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)

    affine[0, 1] = 4.0 * 0.2  # a real shear
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "shear.nii.gz"))
    with pytest.raises(MedsegError, match="sheared"):
        load_scan(tmp_path / "shear.nii.gz")


def test_interrupted_write_leaves_no_mask_and_a_rerun_completes(tiny_run, tiny_dataset,
                                                                tmp_path, monkeypatch):
    scan = sorted((tiny_dataset.parent / "imagesTr").iterdir())[0]
    real_save = nib.save

    def killed_mid_write(image, filename):
        with open(filename, "wb") as f:
            f.write(b"half a mask")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", killed_mid_write)
    args = ["infer", "--model", str(tiny_run), "--input", str(scan), "--output", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130
    assert list(tmp_path.iterdir()) == []  # neither the mask nor its temporary file
    monkeypatch.setattr(nib, "save", real_save)
    assert "1 done" in CliRunner().invoke(main, args).output


def test_two_torchrun_ranks_split_the_cases_each_once(tiny_run, tiny_dataset, tmp_path):
    images = tiny_dataset.parent / "imagesTr"
    proc = subprocess.run([sys.executable, "-m", "cli", "infer", "--nproc", "2", "--model",
                           str(tiny_run), "--input", str(images), "--output", str(tmp_path)],
                          capture_output=True, text=True, errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 done, 0 skipped" in proc.stdout  # all ranks together: every case exactly once
    assert "infer rank 0" in proc.stderr and "infer rank 1" in proc.stderr
    masks = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("labels.json"))
    assert masks == sorted(p.name for p in images.iterdir())
    # Rank 0 wrote the label map beside the masks once every rank was done: whole, the data set's.
    written = json.loads((tmp_path / "labels.json").read_text())["labels"]
    assert written == json.loads((tiny_dataset.parent / "dataset.json").read_text())["labels"]
    json.dumps(proc.stdout)  # printable summary
