"""Fine-tuning (medseg train --init-from): a run that starts from another model's weights.

The source is a medseg run folder or checkpoint, or an nnU-Net v2 trained-model folder. The run
takes the source's network and working frame, and its spacing, patch and CT normalisation
where the run sets none (the weights were learnt for them). Every weight whose shape fits is
copied; output classes are matched by organ name, so a data set that numbers its organs
differently, drops some or adds new ones starts where the source left off for the organs both
know, and from fresh weights for the others. What was copied is recorded in the run's
config.json ("init_from").
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from medseg.data.labels import canonical_labels
from medseg.data.network_input import NetworkInput
from medseg.errors import MedsegError
from medseg.models.nnunet.folder import read_model_folder
from medseg.models.open import KINDS, model_kind
from medseg.nets.checkpoint import INFERENCE_KEYS, load_checkpoint, resolve_checkpoint
from medseg.nets.nnunet import architecture_in_xyz, in_xyz_order, weights_in_xyz
from medseg.training.config import TrainConfig


@dataclass
class InitSource:
    """A model to start from: its weights as medseg's network holds them, and its settings."""

    path: str
    kind: str  # "medseg" or "nnunet"
    weights_file: str
    labels: dict[int, str]
    state_dict: dict = dataclasses.field(repr=False)
    network: dict = dataclasses.field(default_factory=dict)  # TrainConfig network fields
    network_input: dict = dataclasses.field(default_factory=dict)  # spacing, patch, intensity


def read_init_source(path: str | Path) -> InitSource:
    """The model --init-from names, read without running code from it."""
    path = Path(path)
    kind = model_kind(path)  # the one place that tells kinds of model apart
    if kind == "nnunet":
        return _nnunet_source(path)
    if kind != "medseg":
        raise MedsegError(f"{path}: {KINDS[kind]}; fine-tuning starts from one network: give "
                          f"one of its folds' run folders (e.g. {path / 'fold_0'})")
    checkpoint = resolve_checkpoint(path)
    payload = load_checkpoint(checkpoint, needs=INFERENCE_KEYS)
    config = payload["config"]
    model, spec = config["model"], NetworkInput.from_config(config)
    return InitSource(
        path=str(path), kind="medseg", weights_file=str(checkpoint),
        labels={int(k): v for k, v in config["labels"].items()},
        state_dict=payload["state_dict"],
        network={"model": model["name"], "model_kwargs": dict(model.get("kwargs", {})),
                 "spatial_dims": spec.spatial_dims, "context_slices": spec.context_slices,
                 "orientation": spec.orientation, "padding": spec.padding},
        network_input={"spacing": spec.spacing, "patch_size": spec.patch_size,
                       "intensity": dict(spec.intensity)})


def _nnunet_source(folder: Path) -> InitSource:
    """An nnU-Net model's first fold (fold_0 if present), in x, y, z order, in the LPS frame,
    padded as nnU-Net pads."""
    model = read_model_folder(folder)
    if model.regions:
        raise MedsegError(f"{folder}: a region-based nnU-Net model; medseg trains one class per "
                          "voxel, so it cannot fine-tune this one")
    config, order = model.configuration, model.transpose_forward
    schemes = config.get("normalization_schemes")
    if schemes != ["CTNormalization"]:
        raise MedsegError(f"{folder}/plans.json: normalization {schemes}; medseg fine-tunes "
                          "nnU-Net models with CTNormalization (CT in HU)")
    intensity = model.intensity
    state = {f"net.{name}": tensor for name, tensor in
             weights_in_xyz(model.weights[0], order).items()}
    return InitSource(
        path=str(folder), kind="nnunet", weights_file=str(model.checkpoints[0]),
        labels=dict(model.labels), state_dict=state,
        network={"model": "nnunet", "spatial_dims": 3, "context_slices": 0,
                 "model_kwargs": {"architecture": architecture_in_xyz(
                     config["architecture"], order)},
                 "orientation": "LPS", "padding": "zero"},
        network_input={"spacing": tuple(in_xyz_order(config["spacing"], order)),
                       "patch_size": tuple(in_xyz_order(config["patch_size"], order)),
                       "intensity": {"clip": [intensity["percentile_00_5"],
                                              intensity["percentile_99_5"]],
                                     "mean": intensity["mean"], "std": intensity["std"]}})


def with_source_settings(cfg: TrainConfig, source: InitSource) -> TrainConfig:
    """The run's config with the source's network and frame, and its spacing, patch and
    intensity where the run leaves them unset."""
    unset = {key: value for key, value in source.network_input.items()
             if getattr(cfg, key) is None}
    return dataclasses.replace(cfg, **source.network, **unset)


def class_dims(build: Callable[[int], torch.nn.Module], num_classes: int) -> dict[str, list]:
    """Which dimensions of each weight count output classes: those that change when the
    network is built for one class more (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        now, more = build(num_classes).state_dict(), build(num_classes + 1).state_dict()
    return {name: [d for d, (a, b) in enumerate(zip(now[name].shape, more[name].shape))
                   if a != b] for name in now}


def transfer_weights(model: torch.nn.Module, source: InitSource, labels: dict[int, str],
                     build: Callable[[int], torch.nn.Module]) -> dict:
    """Copy the source's weights into `model` (built for `labels`): whole where shapes fit,
    class by class (by organ name) along class dimensions; returns what was done."""
    theirs = {name: i for i, name in canonical_labels(source.labels, source.path).items()}
    ours = canonical_labels(labels, "the run's labels")
    pairs = [(i, theirs[name]) for i, name in ours.items() if name in theirs]
    matched = dict(pairs)
    dims = class_dims(build, len(labels))
    state, copied, fresh = model.state_dict(), [], []
    with torch.no_grad():
        for name, target in state.items():
            weight = source.state_dict.get(name)
            if weight is None or not _fits(weight, target, dims[name], len(source.labels)):
                fresh.append(name)
                continue
            _copy_classes(weight, target, dims[name], pairs)
            copied.append(name)
    model.load_state_dict(state)
    if not copied:
        raise MedsegError(f"{source.path}: none of its weights fit the run's network; "
                          "fine-tune with the network it was trained with")
    return {"path": source.path, "kind": source.kind, "weights": source.weights_file,
            "sha256": hashlib.sha256(Path(source.weights_file).read_bytes()).hexdigest(),
            "tensors_copied": len(copied), "tensors_fresh": fresh,
            "classes": {labels[i]: source.labels[matched[i]] if i in matched else None
                        for i in sorted(labels)}}


def _fits(weight: torch.Tensor, target: torch.Tensor, dims: list[int], classes: int) -> bool:
    """Same shape, except along class dimensions, where the source has its class count."""
    if weight.ndim != target.ndim:
        return False
    return all(weight.shape[d] == (classes if d in dims else target.shape[d])
               for d in range(weight.ndim))


def _copy_classes(weight: torch.Tensor, target: torch.Tensor, dims: list[int],
                  pairs: list[tuple[int, int]]) -> None:
    """target[ours...] = weight[theirs...] for every pair of matched classes, along every class
    dimension at once (a class-to-class layer maps both of its dimensions)."""
    if not dims:
        target.copy_(weight)
        return
    if not pairs:
        return
    ours = torch.tensor([i for i, _ in pairs])
    theirs = torch.tensor([j for _, j in pairs])
    shape = [[-1 if k == n else 1 for k in range(len(dims))] for n in range(len(dims))]
    front = list(range(len(dims)))
    target.movedim(dims, front)[tuple(ours.view(s) for s in shape)] = (
        weight.movedim(dims, front)[tuple(theirs.view(s) for s in shape)].to(target))


def describe_start(report: dict) -> str:
    """One line: where the weights came from, and which organs start fresh."""
    fresh = [name for name, theirs in report["classes"].items() if theirs is None]
    return (f"starting from {report['weights']} ({report['kind']}): {report['tensors_copied']} "
            f"weight tensors copied, {len(report['tensors_fresh'])} fresh; organs new to it: "
            f"{', '.join(fresh) or 'none'}")
