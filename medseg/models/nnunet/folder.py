"""nnU-Net v2 trained-model folders: read, check and load one, without running code from it.

A folder holds dataset.json (labels name -> id, input channels), plans.json (per configuration:
spacing, patch, normalisation, resampling, the network's class and arguments) and
fold_K/checkpoint_final.pth (or checkpoint_best.pth), pickles of a dict whose network_weights
are the state dict. Everything is read as data: the network class and the torch layers the plan
names come from an allowlist, and checkpoints load with torch's weights_only unpickler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medseg.choices import MAX_PATCH
from medseg.data.files import read_json, sha256_of
from medseg.errors import MedsegError
from medseg.nets.checkpoint import safe_torch_load
from medseg.nets.nnunet import NETWORK_CLASSES, build_plan_network

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
# What nnU-Net's checkpoints pickle besides tensors and plain data: numpy scalars (the logged
# losses and Dice) and their dtypes. Nothing here can run code when unpickled.
CHECKPOINT_GLOBALS = (np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)),
                      type(np.dtype(np.int64)), type(np.dtype(np.bool_)))
try:  # numpy 2 keeps the scalar reconstructor under _core, numpy 1 under core
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import scalar as _numpy_scalar
CHECKPOINT_GLOBALS += (_numpy_scalar,)
# The steps medseg reproduces; a plan naming others is refused by name.
NORMALIZATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization",
                  "RescaleTo01Normalization")
RESAMPLING = "resample_data_or_seg_to_shape"
READERS = ("SimpleITKIO", "NibabelIO")  # both read a file's voxels in its stored order


@dataclass
class NNUNetModel:
    """A checked nnU-Net v2 model folder: its configuration, labels and per-fold weights."""

    folder: Path
    configuration_name: str
    configuration: dict
    plans: dict
    labels: dict[int, str]  # mask value -> name
    regions: tuple[int, ...] | None  # region models: the value each output channel writes
    checkpoints: list[Path]
    weights: list[dict] = field(repr=False)
    mirror_axes: tuple[int, ...]
    trainer: str

    @property
    def transpose_forward(self) -> list[int]:
        return list(self.plans.get("transpose_forward", [0, 1, 2]))

    @property
    def intensity(self) -> dict:
        return self.plans["foreground_intensity_properties_per_channel"]["0"]

    def model_id(self) -> str:
        """A digest of the weights, plans and labels: masks record it (reruns skip theirs)."""
        return sha256_of(*self.checkpoints, self.folder / "plans.json",
                         self.folder / "dataset.json")[:16]

    def build_network(self) -> torch.nn.Module:
        """The plan's network (no deep supervision), built from the allowlisted classes."""
        outputs = len(self.regions) if self.regions else len(self.labels)
        return build_plan_network(self.configuration["architecture"], 1, outputs,
                                  f"{self.folder}/plans.json")


def is_nnunet_folder(path: Path) -> bool:
    """A folder that looks like an nnU-Net results folder: it has plans.json, or fold_K
    subfolders with nnU-Net's checkpoint names (a medseg run folder has neither)."""
    path = Path(path)
    return path.is_dir() and ((path / "plans.json").exists() or any(
        (fold / name).exists() for fold in path.glob("fold_*") for name in CHECKPOINT_NAMES))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MedsegError(f"{path.parent}: not an nnU-Net trained-model folder (no {path.name}); "
                          "pass the folder that holds plans.json, dataset.json and fold_K/")
    return read_json(path)


def read_labels(dataset: dict, path: Path) -> tuple[dict[int, str], tuple[int, ...] | None]:
    """({mask value: name}, None) from an nnU-Net dataset.json's labels; for a region-based
    model (labels that are unions of classes), the values its regions write, in
    regions_class_order, as the second item: one network output (sigmoid) per region."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise MedsegError(f"{path}: no 'labels' in dataset.json; copy the model folder again")
    labels = {name: value for name, value in labels.items() if name != "ignore"}
    if any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        return _region_labels(labels, dataset.get("regions_class_order"), path)
    try:
        by_id = {int(value[0] if isinstance(value, (list, tuple)) else value): str(name)
                 for name, value in labels.items()}
    except (TypeError, ValueError, IndexError):
        raise MedsegError(f"{path}: labels must map names to integer ids") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise MedsegError(f"{path}: label ids {sorted(by_id)} are not 0..{len(by_id) - 1}")
    return by_id, None


def _region_labels(labels: dict, order, path: Path) -> tuple[dict[int, str], tuple[int, ...]]:
    regions = [name for name, value in labels.items()
               if not (value == 0 or (isinstance(value, (list, tuple)) and set(value) == {0}))]
    if not isinstance(order, list) or len(order) != len(regions):
        raise MedsegError(f"{path}: a region-based model needs regions_class_order with one "
                          f"value per region ({len(regions)}); copy the model folder again")
    return {0: "background", **{int(v): str(n) for v, n in zip(order, regions)}}, tuple(
        int(v) for v in order)


def check_configuration(config: dict, plans: dict, name: str, path: Path) -> None:
    """Refuse, by name, plan fields medseg does not reproduce."""
    problems = []
    if len(config.get("patch_size", ())) != 3:
        problems.append(f"configuration {name} is 2D (medseg runs nnU-Net's 3D configurations)")
    if config.get("previous_stage") or "cascade" in name:
        problems.append(f"configuration {name} is a cascade stage (it needs the low-resolution "
                        "model's output)")
    for scheme in config.get("normalization_schemes", []):
        if scheme not in NORMALIZATIONS:
            problems.append(f"normalization {scheme}")
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if config.get(key) != RESAMPLING:
            problems.append(f"{key} {config.get(key)}")
    if config.get("architecture", {}).get("network_class_name") not in NETWORK_CLASSES:
        problems.append(f"network {config.get('architecture', {}).get('network_class_name')}")
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        problems.append(f"image reader {reader}")
    if problems:
        raise MedsegError(f"{path}: medseg does not support {'; '.join(problems)}; run this "
                          "model with nnUNetv2_predict")


# Plan values medseg computes with, and the ranges they must lie in: a tampered or damaged
# plans.json is refused naming the value, before any memory is allocated for it.
PLAN_SPACING_MM = (0.05, 50.0)
INTENSITY_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")


def check_plan_values(config: dict, plans: dict, path: Path) -> None:
    """The configuration's spacing and patch, the CT intensity properties and the axis order
    are numbers medseg can compute with: one line naming plans.json and the value, never a
    ZeroDivisionError or a 10^12-voxel allocation."""
    lo, hi = PLAN_SPACING_MM
    if not _numbers(config.get("spacing"), 3, lambda s: lo <= s <= hi):
        raise MedsegError(f"{path}: spacing {config.get('spacing')!r} is not three numbers from "
                          f"{lo} to {hi} mm; the plan is damaged: copy the model folder again")
    if not _numbers(config.get("patch_size"), 3, lambda p: p == int(p) and 1 <= p <= MAX_PATCH):
        raise MedsegError(f"{path}: patch_size {config.get('patch_size')!r} is not three whole "
                          f"numbers from 1 to {MAX_PATCH}; the plan is damaged: copy the model "
                          "folder again")
    if sorted(plans.get("transpose_forward", [0, 1, 2])) != [0, 1, 2]:
        raise MedsegError(f"{path}: transpose_forward {plans.get('transpose_forward')!r} is no "
                          "order of the axes 0, 1, 2; the plan is damaged")
    if "CTNormalization" in config.get("normalization_schemes", []):
        found = plans.get("foreground_intensity_properties_per_channel", {})
        found = found.get("0", {}) if isinstance(found, dict) else {}
        bad = [k for k in INTENSITY_KEYS if not _numbers([found.get(k)], 1, lambda v: True)]
        if bad or not found.get("std", 0) > 0:
            raise MedsegError(f"{path}: CT normalisation needs foreground_intensity_properties_"
                              f"per_channel['0'] with finite {', '.join(INTENSITY_KEYS)} (std "
                              f"above 0); {', '.join(bad) or 'std'} missing or not a number: "
                              "the plan is damaged, copy the model folder again")


def _numbers(values, count: int, within) -> bool:
    """`values` is a list of `count` finite numbers, each `within` its range."""
    return (isinstance(values, (list, tuple)) and len(values) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) and within(v) for v in values))


def resolve_configuration(plans: dict, name: str, path: Path) -> dict:
    """A configuration with nnU-Net's 'inherits_from' chain applied."""
    configurations = plans.get("configurations", {})
    if name not in configurations:
        raise MedsegError(f"{path}: no configuration {name!r} (it has "
                          f"{', '.join(configurations)}); the folder is incomplete")
    config, seen = dict(configurations[name]), {name}
    while "inherits_from" in config:
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise MedsegError(f"{path}: configuration {name!r} inherits from {parent!r}, which "
                              "is missing or circular")
        seen.add(parent)
        config = {**configurations[parent], **config}
    return config


def fold_folders(folder: Path, folds: str | None) -> list[Path]:
    """The fold folders to ensemble: every fold_K with a checkpoint, or the ones asked for."""
    if folds is None:
        # As nnU-Net's auto-detection: the numbered folds; fold_all only when it is alone.
        found = [p for p in folder.glob("fold_*")
                 if any((p / n).exists() for n in CHECKPOINT_NAMES)]
        numbered = sorted((p for p in found if p.name[5:].isdigit()),
                          key=lambda p: int(p.name[5:]))
        found = numbered or [p for p in found if p.name == "fold_all"]
        if not found:
            raise MedsegError(f"{folder}: no fold_K/{CHECKPOINT_NAMES[0]} in this model folder; "
                              "copy the trained folds into it")
        return found
    names = [f.strip() for f in str(folds).split(",") if f.strip()]
    chosen = [folder / f"fold_{f}" for f in names]
    missing = [p.name for p in chosen if not any((p / n).exists() for n in CHECKPOINT_NAMES)]
    if missing:
        present = ", ".join(sorted(p.name[5:] for p in folder.glob("fold_*"))) or "none"
        raise MedsegError(f"{folder}: {', '.join(missing)} has no checkpoint (folds present: "
                          f"{present}); choose --folds among them")
    return chosen


def load_checkpoint(fold: Path) -> tuple[Path, dict]:
    path = next(fold / n for n in CHECKPOINT_NAMES if (fold / n).exists())
    payload = safe_torch_load(path, advice="pass an nnU-Net v2 trained-model folder",
                              whose="nnU-Net", allowed=CHECKPOINT_GLOBALS)
    if not isinstance(payload, dict) or "network_weights" not in payload:
        raise MedsegError(f"{path}: not an nnU-Net v2 checkpoint (no network_weights)")
    return path, payload


def read_model_folder(folder: Path, folds: str | None = None) -> NNUNetModel:
    """Read and check an nnU-Net v2 trained-model folder and its folds' weights."""
    folder = Path(folder)
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    labels, regions = read_labels(dataset, folder / "dataset.json")
    channels = dataset.get("channel_names", dataset.get("modality", {"0": "CT"}))
    if len(channels) != 1:
        raise MedsegError(f"{folder}: the model expects {len(channels)} input channels "
                          f"({', '.join(map(str, channels.values()))}); medseg feeds one scan")
    loaded = [load_checkpoint(fold) for fold in fold_folders(folder, folds)]
    first = loaded[0][1]
    name = first.get("init_args", {}).get("configuration")
    if not isinstance(name, str):
        raise MedsegError(f"{loaded[0][0]}: the checkpoint does not name its configuration")
    for path, payload in loaded[1:]:
        if payload.get("init_args", {}).get("configuration") != name:
            raise MedsegError(f"{path}: trained for another configuration than {name}; "
                              "ensemble folds of one configuration")
    config = resolve_configuration(plans, name, folder / "plans.json")
    check_configuration(config, plans, name, folder / "plans.json")
    check_plan_values(config, plans, folder / "plans.json")
    mirror = first.get("inference_allowed_mirroring_axes")
    return NNUNetModel(
        folder=folder, configuration_name=name, configuration=config, plans=plans,
        labels=labels, regions=regions, checkpoints=[path for path, _ in loaded],
        weights=[payload["network_weights"] for _, payload in loaded],
        mirror_axes=tuple(int(a) for a in mirror) if mirror is not None else (),
        trainer=str(first.get("trainer_name", "nnUNetTrainer")))
