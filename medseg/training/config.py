"""A training run's settings (TrainConfig) and the checks that refuse bad ones, naming the
setting."""

from __future__ import annotations

from dataclasses import dataclass, field

from medseg.choices import (
    AUGMENTATIONS,
    MAX_OVERLAP,
    MAX_PATCH,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    WORKING_SPACING_MM,
    Number,
    check_device,
    check_number,
    check_settings,
)
from medseg.data.network_input import ORIENTATIONS, PADDINGS
from medseg.errors import MedsegError
from medseg.models.options import OVERLAP
from medseg.nets.registry import DEFAULT_NETWORK


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in the run folder and in every checkpoint."""

    manifest: str
    output: str
    model: str = DEFAULT_NETWORK  # the network: a name in medseg.nets.registry (--network)
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


# Numeric settings' ranges (the command line's option types are made from them too).
NUMBER_RULES = {
    "epochs": Number(True, 1), "iters_per_epoch": Number(True, 1),
    "batch_size": Number(True, 1), "val_every": Number(True, 1),
    "warmup_iters": Number(True, 0), "num_workers": Number(True, 0),
    "seed": Number(True), "folds": Number(True, 2),
    "fold": Number(True, 0), "spatial_dims": Number(True, 2, 3),
    "context_slices": Number(True, 0),
    "lr": Number(False, 0, None, True), "weight_decay": Number(False, 0),
    "val_fraction": Number(False, 0, 1, True), "overlap": Number(False, 0, MAX_OVERLAP),
    "affine_prob": Number(False, 0, 1), "contrast_prob": Number(False, 0, 1),
}


SPACING_RULE = Number(False, *WORKING_SPACING_MM)
PATCH_RULE = Number(True, 1, MAX_PATCH)
CHOICES = {"augment": AUGMENTATIONS, "schedule": SCHEDULES, "optimizer": OPTIMIZERS,
           "precision": PRECISIONS, "orientation": ORIENTATIONS, "padding": PADDINGS}


def check_triple(name: str, value, rule: Number) -> None:
    """spacing and patch_size: three numbers within the rule (or unset, to be planned)."""
    if value is None:
        return
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise MedsegError(f"{name}: expected three numbers like [3, 3, 3], got {value!r}")
    for part in value:
        check_number(name, part, rule)


def check_config(cfg: TrainConfig, num_classes: int) -> None:
    """Reject settings that would fail deep inside MONAI with a cryptic message, or make a run
    that cannot learn (a NaN learning rate), naming the setting."""
    check_device(cfg.device)  # before the run folder is claimed (and, with --overwrite, emptied)
    check_settings(cfg, NUMBER_RULES, CHOICES)
    check_triple("spacing", cfg.spacing, SPACING_RULE)
    check_triple("patch_size", cfg.patch_size, PATCH_RULE)
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
