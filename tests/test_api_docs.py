"""docs/api.md's examples run as they stand, on a miniature of what `make demo` leaves behind;
and the API's answers agree with each other and with geometry computed by hand."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg import Segmentation, Segmenter, segment
from medseg.errors import MedsegError

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.fixture(scope="module")
def demo_tree(tiny_run, tiny_dataset, tmp_path_factory) -> Path:
    """A folder laid out like the repository root after `make demo`, at a tiny scale: the run in
    runs/demo, the data it trained on, and held-out cases of the same label map."""
    from medseg.data.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("repo_root")
    shutil.copytree(tiny_run, root / "runs" / "demo")
    shutil.copytree(tiny_dataset.parent, root / "runs" / "demo" / "data" / "train")
    write_synthetic_dataset(root / "runs" / "demo" / "data" / "heldout", 2, seed=11,
                            spacing=(6.0, 6.0, 6.0), workers=1, progress=False)
    return root


def python_examples(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_python_example_in_the_api_doc_runs(demo_tree, monkeypatch):
    examples = python_examples(API_DOC.read_text())
    assert len(examples) >= 4
    monkeypatch.chdir(demo_tree)
    for example in examples:  # in order, each in a fresh namespace, as a reader would paste it
        exec(compile(example, str(API_DOC), "exec"), {"__name__": "__main__"})
    written = nib.load(str(demo_tree / "runs/api_example/case_000_mask.nii.gz"))
    scan = nib.load(str(demo_tree / "runs/demo/data/heldout/imagesTr/case_000.nii.gz"))
    assert written.shape == scan.shape
    np.testing.assert_allclose(written.affine, scan.affine, atol=1e-6)
    assert (demo_tree / "runs/api_example/evaluation/summary.json").exists()
    assert (demo_tree / "runs/api_example/run/best.pt").exists()


def test_a_mirrored_array_gives_the_mirrored_mask(tiny_run, tiny_dataset):
    """The same voxels stored in another axis order (the affine says so) are the same patient:
    the mask must come back mirrored, voxel for voxel."""
    image = nib.load(str(tiny_dataset.parent / "imagesTr" / "case_000.nii.gz"))
    array, affine = np.asarray(image.dataobj, dtype=np.float32), image.affine
    flip_x = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip_x[0, 3] = array.shape[0] - 1  # voxel i of the mirror is voxel (n-1-i) of the original
    segmenter = Segmenter(tiny_run, device="cpu")
    plain = segmenter(array, affine=affine).mask
    mirrored = segmenter(array[::-1].copy(), affine=affine @ flip_x).mask
    assert plain.shape == array.shape
    assert np.array_equal(mirrored[::-1], plain)


def test_segment_on_a_path_writes_nothing_and_matches_the_infer_command(tiny_run, tiny_dataset,
                                                                       tmp_path):
    from conftest import run_cli_here

    scan = tiny_dataset.parent / "imagesTr" / "case_001.nii.gz"
    before = sorted(p.name for p in scan.parent.iterdir())
    result = segment(scan, tiny_run, device="cpu")
    assert sorted(p.name for p in scan.parent.iterdir()) == before
    done = run_cli_here("infer", "--model", str(tiny_run), "--input", str(scan), "--output",
                        str(tmp_path / "masks"), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    written = nib.load(str(tmp_path / "masks" / scan.name))
    assert np.array_equal(np.asarray(written.dataobj), result.mask)
    assert set(np.unique(result.mask)) <= set(result.labels)


def test_api_mistakes_are_one_clear_error(tiny_run):
    with pytest.raises(MedsegError, match="unknown option overlapp; valid: device, overlap"):
        Segmenter(tiny_run, overlapp=0.5)
    segmenter = Segmenter(tiny_run, device="cpu")
    with pytest.raises(MedsegError, match="an array needs its affine"):
        segmenter(np.zeros((8, 8, 8), np.float32))
    with pytest.raises(MedsegError, match=r"expected a 3D array \(X, Y, Z\), got shape \(8, 8\)"):
        segmenter(np.zeros((8, 8), np.float32), affine=np.eye(4))
    with pytest.raises(MedsegError, match="the array: every voxel is -1000, the scan is blank"):
        segmenter(np.full((40, 40, 20), -1000.0, np.float32), affine=np.diag([8, 8, 8, 1]))
    labelled = Segmentation(np.ones((2, 2, 2), np.uint8), np.eye(4), {0: "background", 1: "liver"})
    assert labelled.organ("liver").all()
    with pytest.raises(MedsegError, match="no organ 'brain' in this model's labels; it has: liver"):
        labelled.organ("brain")


def test_segmenting_an_array_leaves_it_as_it_was(tiny_run, tiny_dataset):
    image = nib.load(str(tiny_dataset.parent / "imagesTr" / "case_002.nii.gz"))
    array = np.asarray(image.dataobj, dtype=np.float32)  # float32 and C order: used, not copied
    before = array.copy()
    Segmenter(tiny_run, device="cpu", tta=True)(array, affine=image.affine)
    assert np.array_equal(array, before)


def test_label_maps_as_dicts_are_checked_like_label_map_files(tiny_dataset, tmp_path):
    from medseg import evaluate
    from medseg.data.phantoms import SYNTHETIC_LABELS

    labels = tiny_dataset.parent / "labelsTr"
    organs = {name: i for i, name in SYNTHETIC_LABELS.items()}  # {name: id}, as files may be
    summary = evaluate(labels, labels, tmp_path / "e", labels=organs, figures=False)
    assert set(summary["organs"]) == {n for i, n in SYNTHETIC_LABELS.items() if i}
    assert summary["organs"]["liver"]["dice_mean"] == 1.0  # the references against themselves
    with pytest.raises(MedsegError, match="the label map: label entry 'x': 'liver' has no integer"):
        evaluate(labels, labels, tmp_path / "f", labels={"x": "liver"})


def test_a_device_name_torch_does_not_know_is_one_clear_error(tiny_run):
    with pytest.raises(MedsegError,
                       match="device 'gpu': choose one of auto, cpu, cuda, mps, or cuda:N"):
        Segmenter(tiny_run, device="gpu")


def test_a_recipe_device_torch_does_not_know_is_refused_before_a_run_is_replaced(tiny_run,
                                                                                tiny_dataset,
                                                                                tmp_path):
    from medseg import train

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    kept = sorted(p.name for p in run.iterdir())
    with pytest.raises(MedsegError, match="device 'gpu': choose one of auto, cpu, cuda"):
        train(manifest=str(tiny_dataset), output=str(run), device="gpu", epochs=1, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == kept
