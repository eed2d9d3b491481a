"""A training run's settings (TrainConfig) and the checks that refuse bad ones, naming the
setting."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from medseg.choices import (
    AUGMENTATIONS,
    MAX_OVERLAP,
    MAX_PATCH,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    WORKING_SPACING_MM,
    check_device,
)
from medseg.data.network_input import ORIENTATIONS, PADDINGS
from medseg.errors import MedsegError
from medseg.inference.options import OVERLAP
from medseg.nets.registry import DEFAULT_MODEL


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in the run folder and in every checkpoint."""

    manifest: str
    output: str
    model: str = DEFAULT_MODEL  # the network: a name in medseg.nets.registry (--network)
    model_kwargs: dict = field(default_factory=dict)  # e.g. channels, upsample, deep_supervision
    spatial_dims: int = 3  # 2: the model sees axial slices, context_slices neighbours each side
    context_slices: int = 0
    loss: str = "dice_ce"
    loss_kwargs: dict = field(default_factory=dict)  # medseg.training.losses.build_loss options
    # Left unset (None), spacing, patch, batch, intensity and the default network's topology
    # come from a plan: plan.json beside the manifest, or one made from the data at the start
    # (medseg.training.planning). In 2D mode only the patch's in-plane size is used.
    spacing: tuple[float, float, float] | None = None
    patch_size: tuple[int, int, int] | None = None
    batch_size: int | None = None
    epochs: int = 40
    iters_per_epoch: int = 25
    lr: float = 3e-3
    weight_decay: float = 1e-5
    val_every: int = 5
    val_fraction: float = 0.15
    fold: int | None = None  # with `folds`: k-fold cross-validation, this fold validates
    folds: int = 5
    optimizer: str = "adamw"  # or "sgd": nnU-Net's SGD with Nesterov momentum 0.99
    plan: str | None = None  # the plan.json the spacing, patch and intensity came from
    intensity: dict | None = None  # CT normalisation (clip, mean, std in HU); None: planned
    overlap: float = OVERLAP  # validation's sliding window, as `medseg infer` does
    affine_prob: float = 0.25
    augment: str = "light"  # or "nnunet": rotation, scaling, noise, blur, gamma, low-res, flips
    contrast_prob: float = 0.3  # per-organ HU shifts that mimic other contrast phases; 0: off
    schedule: str = "poly"  # or "cosine": linear warm-up, then cosine decay
    warmup_iters: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 on CUDA and bf16-capable CPUs, else fp32; fp16 adds a scaler
    compile: bool = False  # torch.compile the network for training (checkpoints keep plain names)
    seed: int = 0
    num_workers: int = 0
    cache_dir: str | None = None  # on-disk cache of resampled cases, reused across runs
    # Fine-tuning: a medseg run or checkpoint, or an nnU-Net model folder, whose network,
    # working frame and (where unset here) spacing, patch and intensity the run takes, and
    # whose weights it starts from (medseg.training.init_from).
    init_from: str | None = None
    orientation: str = "RAS"  # the working frame; "LPS" for fine-tuned nnU-Net models
    padding: str = "air"  # of scans smaller than a patch; "zero" (nnU-Net's) for its models


# Numeric settings: (whole number?, lowest, highest, lowest excluded?). None: unbounded.
NUMBER_RULES = {
    "epochs": (True, 1, None, False), "iters_per_epoch": (True, 1, None, False),
    "batch_size": (True, 1, None, False), "val_every": (True, 1, None, False),
    "warmup_iters": (True, 0, None, False), "num_workers": (True, 0, None, False),
    "seed": (True, None, None, False), "folds": (True, 2, None, False),
    "fold": (True, 0, None, False), "spatial_dims": (True, 2, 3, False),
    "context_slices": (True, 0, None, False),
    "lr": (False, 0, None, True), "weight_decay": (False, 0, None, False),
    "val_fraction": (False, 0, 1, True), "overlap": (False, 0, MAX_OVERLAP, False),
    "affine_prob": (False, 0, 1, False), "contrast_prob": (False, 0, 1, False),
}


def check_number(name: str, value, whole: bool, lo, hi, lo_open: bool = False) -> None:
    """A setting must be a (whole) number, finite, within [lo, hi] (lo excluded if lo_open)."""
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise MedsegError(f"{name}: expected {'a whole number' if whole else 'a number'}, got "
                          f"{value!r}; fix it in the recipe or on the command line")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if not math.isfinite(value) or too_low or (hi is not None and value > hi):
        bounds = f"{'above' if lo_open else 'at least'} {lo}" if lo is not None else ""
        bounds += (" and " if bounds and hi is not None else "") + (
            f"at most {hi}" if hi is not None else "")
        raise MedsegError(f"{name}: {value!r} is not a finite number {bounds}; fix it in the "
                          "recipe or on the command line")


def check_triple(name: str, value, whole: bool, lo, hi) -> None:
    """spacing and patch_size: three numbers from lo to hi (or unset, to be planned)."""
    if value is None:
        return
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise MedsegError(f"{name}: expected three numbers like [3, 3, 3], got {value!r}")
    for part in value:
        check_number(name, part, whole, lo, hi)


def check_config(cfg: TrainConfig, num_classes: int) -> None:
    """Reject settings that would fail deep inside MONAI with a cryptic message, or make a run
    that cannot learn (a NaN learning rate), naming the setting."""
    for name, rule in NUMBER_RULES.items():
        if getattr(cfg, name) is not None:
            check_number(name, getattr(cfg, name), *rule)
    check_triple("spacing", cfg.spacing, False, *WORKING_SPACING_MM)
    check_triple("patch_size", cfg.patch_size, True, 1, MAX_PATCH)
    choices = {"augment": AUGMENTATIONS, "schedule": SCHEDULES, "optimizer": OPTIMIZERS,
               "precision": PRECISIONS, "orientation": ORIENTATIONS, "padding": PADDINGS}
    check_device(cfg.device)  # before the run folder is claimed (and, with --overwrite, emptied)
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise MedsegError(f"{key} {getattr(cfg, key)!r}: choose one of {', '.join(valid)}")
    for key in ("model_kwargs", "loss_kwargs"):
        if not isinstance(getattr(cfg, key), dict):
            raise MedsegError(f"{key}: expected a mapping like {{channels: [16, 32]}}, got "
                              f"{getattr(cfg, key)!r}")
    if cfg.context_slices and cfg.spatial_dims != 2:
        raise MedsegError("context slices are for 2D models: add --dims 2, or drop them")
    weights = cfg.loss_kwargs.get("class_weights")
    if weights is not None and len(weights) != num_classes:
        raise MedsegError(f"class weights: {len(weights)} given, the label map has "
                          f"{num_classes} classes (background first)")


def in_channels(cfg: TrainConfig) -> int:
    """Input channels: one CT volume in 3D; the slice and its 2K neighbours in 2D."""
    return 1 + 2 * cfg.context_slices if cfg.spatial_dims == 2 else 1
