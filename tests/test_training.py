"""Training runs that users rely on: folds, exact resume after SIGKILL, DDP with two ranks."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_ARGS

from medseg.errors import MedsegError
from medseg.training.cases import split_cases

# Enough epochs that a kill can land in the middle of the run.
RESUME_ARGS = [a if a != "1" else "6" for a in TINY_TRAIN_ARGS[:2]] + TINY_TRAIN_ARGS[2:]


def train_cli(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", **popen)


def weights(run) -> dict:
    return torch.load(run / "last.pt", weights_only=True)["state_dict"]


def test_folds_partition_the_cases_deterministically():
    cases = [{"image": f"c{i}"} for i in range(11)]
    vals = [split_cases(cases, 0.2, seed=3, fold=k, folds=5)[1] for k in range(5)]
    seen = [c["image"] for v in vals for c in v]
    assert sorted(seen) == sorted(c["image"] for c in cases)  # each case validates exactly once
    assert split_cases(cases, 0.2, 3, 2, 5) == split_cases(cases, 0.2, 3, 2, 5)
    train, val = split_cases(cases, 0.2, 3, 2, 5)
    assert not {c["image"] for c in train} & {c["image"] for c in val}
    with pytest.raises(MedsegError, match="fold 5 of 5"):
        split_cases(cases, 0.2, 3, 5, 5)


def test_a_killed_run_resumes_to_the_same_weights(tiny_dataset, tmp_path):
    straight = train_cli("--manifest", tiny_dataset, "--output", tmp_path / "a", *RESUME_ARGS)
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    victim = train_cli("--manifest", tiny_dataset, "--output", tmp_path / "b", *RESUME_ARGS)
    log = tmp_path / "b" / "log.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) > 2):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    epochs_done = len(log.read_text().splitlines()) - 1
    assert 2 <= epochs_done < 6, "the kill should land mid-run"

    resumed = train_cli("--manifest", tiny_dataset, "--output", tmp_path / "b", *RESUME_ARGS,
                        "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming after epoch" in out
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(log.read_text().splitlines()) == 7  # header + epochs 1..6, none twice


def test_resume_refuses_changed_settings(tiny_run, tiny_dataset):
    proc = train_cli("--manifest", tiny_dataset, "--output", tiny_run, *TINY_TRAIN_ARGS,
                     "--lr", "0.5", "--resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "other settings (lr)" in err and "Traceback" not in err


def test_two_ddp_ranks_see_different_data_and_end_identical(tiny_dataset, tmp_path):
    proc = train_cli("--manifest", tiny_dataset, "--output", tmp_path / "ddp", *TINY_TRAIN_ARGS,
                     "--nproc", "2")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err[-3000:]
    ranks = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith("rank "))
    assert set(ranks) == {"rank 0", "rank 1"}, out
    (data0, weights0), (data1, weights1) = (ranks[r].split(" weights ") for r in sorted(ranks))
    assert data0 != data1  # each rank trained on its own patches
    assert weights0 == weights1  # DDP kept the replicas identical
    assert (tmp_path / "ddp" / "last.pt").exists()


def _config(**kw):
    from medseg.training.config import TrainConfig

    return TrainConfig(manifest="m", output="o", lr=0.01, **kw)


def test_poly_and_warmup_cosine_schedules():
    from medseg.training.optim import learning_rate

    poly = _config()
    assert learning_rate(poly, 0, 100) == pytest.approx(0.01)
    assert learning_rate(poly, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    cosine = _config(schedule="cosine", warmup_iters=10)
    assert learning_rate(cosine, 0, 110) == pytest.approx(0.001)  # warm-up starts small
    assert learning_rate(cosine, 9, 110) == pytest.approx(0.01)
    assert learning_rate(cosine, 60, 110) == pytest.approx(0.005)  # half-way down the cosine
    assert learning_rate(cosine, 110, 110) == pytest.approx(0.0, abs=1e-12)


TINY_INTENSITY = {"clip": [-1000.0, 300.0], "mean": 50.0, "std": 200.0}


def _cache_transforms(spacing: float, patch=(16, 16, 8)):
    from medseg.data.network_input import NetworkInput
    from medseg.data.transforms import training_cache_transforms

    return training_cache_transforms(NetworkInput((spacing,) * 3, TINY_INTENSITY, patch), 10)


def _phantom_item():
    from monai.data import MetaTensor
    from monai.transforms import ClassesToIndicesd

    from medseg.data.phantoms import make_phantom

    p = make_phantom(5, spacing=(4.0, 4.0, 4.0), orientation="RAS")
    item = {"image": MetaTensor(p.image[None].astype(np.float32)),
            "label": MetaTensor(p.label[None])}
    return ClassesToIndicesd("label", num_classes=10)(item)


@pytest.mark.parametrize("augment", ["light", "nnunet"])
def test_patches_are_mostly_foreground_and_cover_every_organ(augment):
    from medseg.data.network_input import NetworkInput
    from medseg.data.transforms import training_sample_transforms

    item = _phantom_item()
    spec = NetworkInput((4, 4, 4), TINY_INTENSITY, (32, 32, 24))
    sample = training_sample_transforms(spec, 10, augment=augment)
    sample.set_random_state(seed=1)
    patches = [sample(item)[0] for _ in range(60)]
    assert all(tuple(p["image"].shape) == (1, 32, 32, 24) for p in patches)
    assert all(p["label"].dtype == torch.long and p["label"].max() < 10 for p in patches)
    with_organs = [set(torch.unique(p["label"]).tolist()) - {0} for p in patches]
    assert sum(bool(s) for s in with_organs) >= len(patches) / 3
    assert set().union(*with_organs) == set(range(1, 10))  # small organs are sampled too


def test_disk_cache_gives_the_same_cases_and_is_reused(tiny_dataset, tmp_path):
    from medseg.data.manifest import load_manifest
    from medseg.data.network_input import NetworkInput
    from medseg.data.transforms import training_cache_transforms
    from medseg.training.cases import cache_cases, cache_key

    cases, _ = load_manifest(tiny_dataset)

    def cached(spacing, cache_dir=None):
        spec = NetworkInput((spacing,) * 3, TINY_INTENSITY, (16, 16, 8))
        return cache_cases(cases[:1], training_cache_transforms(spec, 10), cache_dir,
                           cache_key("train", spec, 10))

    in_memory = cached(8.0)
    on_disk = cached(8.0, str(tmp_path))
    on_disk[0]  # written when first read
    files = sorted(tmp_path.rglob("*"))
    again = cached(8.0, str(tmp_path))
    again[0]
    assert len(files) == 2 and sorted(tmp_path.rglob("*")) == files  # a folder, one case
    cached(6.0, str(tmp_path))[0]
    assert len(list(tmp_path.iterdir())) == 2  # another spacing: not the same cached case
    for item in (on_disk[0], again[0]):
        assert torch.equal(torch.as_tensor(item["image"]), torch.as_tensor(in_memory[0]["image"]))
        assert torch.equal(torch.as_tensor(item["label"]), torch.as_tensor(in_memory[0]["label"]))


def test_cache_keeps_a_bounded_even_spread_of_patch_centres_per_class(tiny_dataset):
    """Every voxel's index would cost 8 bytes per voxel; the cache keeps CLASS_LOCATIONS per
    class, spread over the whole class, so patches still reach all of every organ."""
    from medseg.data.manifest import load_manifest
    from medseg.data.transforms import CLASS_LOCATIONS
    from medseg.training.cases import cache_cases

    cases, _ = load_manifest(tiny_dataset)
    item = cache_cases(cases[:1], _cache_transforms(4.0))[0]
    label = torch.as_tensor(item["label"]).flatten()
    capped = 0
    for cls, locations in enumerate(item["label_cls_indices"]):
        locations = torch.as_tensor(locations).flatten()
        members = torch.nonzero(label == cls).flatten()
        assert len(locations) == min(len(members), CLASS_LOCATIONS)
        assert bool((label[locations] == cls).all())  # each centre lies in its class
        if len(members) > CLASS_LOCATIONS:
            capped += 1
            assert locations.min() == members.min() and locations.max() == members.max()
    assert capped >= 1  # the case is large enough to exercise the cap


def _tiny_config(manifest, output, **kw):
    from medseg.training.config import TrainConfig

    return TrainConfig(manifest=str(manifest), output=str(output), spacing=(8.0, 8.0, 8.0),
                       patch_size=(32, 32, 16), batch_size=1, iters_per_epoch=2, val_every=100,
                       model_kwargs={"channels": (4, 8, 16), "strides": (2, 2)}, **kw)


def test_training_from_the_disk_cache_matches_training_from_memory(tiny_dataset, tmp_path):
    """--cache-dir reads cases back from disk for every patch instead of holding them; the run
    must train on exactly the same data, to the same weights."""
    from medseg.training.loop import train

    train(_tiny_config(tiny_dataset, tmp_path / "memory", epochs=2))
    train(_tiny_config(tiny_dataset, tmp_path / "disk", epochs=2, cache_dir=str(tmp_path / "c")))
    assert len([f for f in (tmp_path / "c").rglob("*") if f.is_file()]) == 3  # val too
    memory, disk = (torch.load(tmp_path / run / "last.pt", weights_only=True)["state_dict"]
                    for run in ("memory", "disk"))
    assert all(torch.equal(memory[k], disk[k]) for k in memory)


def test_fp16_loss_scaler_state_survives_an_interruption(tiny_dataset, tmp_path, monkeypatch):
    """fp16 skips steps whose scaled gradients overflow and grows the scale after a run of good
    steps; a resumed run must carry on with the saved scaler, as an uninterrupted run would."""
    from medseg.training import loop as training

    config = {"epochs": 3, "precision": "fp16"}
    training.train(_tiny_config(tiny_dataset, tmp_path / "straight", **config))

    write = training.MetricsLog.write

    def interrupt_after_epoch_2(self, epoch, *args):
        write(self, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.MetricsLog, "write", interrupt_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        training.train(_tiny_config(tiny_dataset, tmp_path / "resumed", **config))
    monkeypatch.undo()
    training.train(_tiny_config(tiny_dataset, tmp_path / "resumed", **config), resume=True)

    straight, resumed = (torch.load(tmp_path / run / "last.pt", weights_only=True)
                         for run in ("straight", "resumed"))
    assert straight["scaler"]["scale"] < 65536.0  # overflowing steps were skipped on the way
    assert resumed["scaler"] == straight["scaler"]
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k])
               for k in straight["state_dict"])


def test_compiled_training_writes_checkpoints_that_load_without_compiling(tiny_dataset,
                                                                         tmp_path, monkeypatch):
    from medseg.models.open import open_model
    from medseg.training.loop import train

    # The eager backend wraps the network as every backend does (its weights' names gain
    # _orig_mod.), without the half minute inductor takes to generate CPU code.
    compile_eagerly = functools.partial(torch.compile, backend="eager")
    monkeypatch.setattr(torch, "compile", compile_eagerly)
    train(_tiny_config(tiny_dataset, tmp_path / "run", epochs=1, compile=True))
    names = weights(tmp_path / "run")
    assert names and not any("_orig_mod" in name for name in names)
    open_model(tmp_path / "run" / "last.pt")  # loads into a plain, uncompiled network


@pytest.mark.parametrize("native, asked, expected", [
    (True, "auto", "bf16"), (False, "auto", "auto"), (True, "fp32", "fp32"),
    (False, "fp16", "fp16")])
def test_auto_precision_trains_in_bf16_only_on_cpus_that_compute_it(native, asked, expected,
                                                                     monkeypatch):
    from medseg import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.training_precision(asked, torch.device("cpu")) == expected
    assert runtime.training_precision(asked, torch.device("cuda")) == asked  # autocast decides
