"""Training: manifest -> cached, resampled cases -> 2D or 3D patches -> model -> checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, list_data_collate
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.utils import set_determinism
from tqdm import tqdm

from medseg.data.io import check_replaceable, check_writable
from medseg.data.manifest import check_case_files, load_manifest, write_json
from medseg.data.network_input import NetworkInput
from medseg.data.scan_checks import check_label_ids
from medseg.data.transforms import (
    AUGMENTATIONS,
    CLASS_LOCATIONS,
    training_cache_transforms,
    training_sample_transforms,
    validation_cache_transforms,
)
from medseg.distributed import (
    all_gather,
    barrier,
    init_process_group,
    is_main_process,
    local_device,
    rank_and_world,
    shutdown,
)
from medseg.errors import MedsegError
from medseg.evaluation.figures import training_curves
from medseg.inference.predictor import OVERLAP, InferOptions, Predictor
from medseg.limits import MAX_OVERLAP, MAX_PATCH, WORKING_SPACING_MM
from medseg.nets.checkpoint import load_checkpoint, save_checkpoint
from medseg.nets.registry import build_model
from medseg.runtime import PRECISIONS, autocast, resolve_device, training_precision
from medseg.training.losses import build_loss

log = logging.getLogger("medseg")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in the run folder and in every checkpoint."""

    manifest: str
    output: str
    model: str = "unet3d"
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


def split_cases(cases: list[dict], val_fraction: float, seed: int,
                fold: int | None = None, folds: int = 5) -> tuple[list, list]:
    """A deterministic train/validation split: a held-out fraction, or fold k of k-fold CV."""
    order = np.random.default_rng(seed).permutation(len(cases))
    if fold is not None:
        if not 0 <= fold < folds or folds > len(cases):
            raise MedsegError(f"fold {fold} of {folds}: need 0 <= fold < folds <= "
                              f"{len(cases)} cases")
        val_idx = set(np.array_split(order, folds)[fold].tolist())
    else:
        n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
        val_idx = set(order[:n_val].tolist()) if len(cases) > 1 else set()
    val = [c for i, c in enumerate(cases) if i in val_idx]
    train = [c for i, c in enumerate(cases) if i not in val_idx]
    return train, val or train[:1]


def network_input(cfg: TrainConfig) -> NetworkInput:
    """What this run's network sees; its checkpoints carry it to inference."""
    return NetworkInput(spacing=tuple(cfg.spacing), intensity=cfg.intensity,
                        patch_size=tuple(cfg.patch_size), spatial_dims=cfg.spatial_dims,
                        context_slices=cfg.context_slices)


def cache_cases(cases: list[dict], transforms, cache_dir: str | None = None,
                key: str = "cases") -> Sequence[dict]:
    """Load and transform every case once.

    Without cache_dir the cases stay in memory (CacheDataset). With cache_dir they stay on disk
    only (PersistentDataset, read with weights_only=True, like checkpoints), in a folder named
    by `key`, and are read back for every patch: memory then holds a case per loader worker
    whatever the data set's size, and later runs with the same key skip loading and resampling.
    """
    if cache_dir:
        return PersistentDataset(cases, transforms, cache_dir=Path(cache_dir) / key)
    # All deterministic transforms, so it hands out the cached cases without copying.
    return CacheDataset(cases, transforms, num_workers=1, progress=False)


def cache_key(kind: str, spec: NetworkInput, num_classes: int = 0) -> str:
    """A cache folder name that changes with anything the cached cases depend on."""
    settings = {"kind": kind, "classes": num_classes, "locations": CLASS_LOCATIONS,
                **spec.to_config(), "dims": spec.spatial_dims, "context": spec.context_slices}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


# Notes about scans smaller than a patch name this many cases, then count the rest.
NAMED_NOTES = 5


def check_training_data(cases: list[dict], items: Sequence[dict], labels: dict[int, str],
                        spec: NetworkInput) -> None:
    """One line per finding, naming the case: labels outside the map are errors; scans smaller
    than a patch (padded, as inference pads) and classes no case contains are notes."""
    present, small = set(), []
    for case, item in zip(cases, items):
        found = torch.unique(item["label"]).tolist()
        check_label_ids(found, len(labels), case["label"])
        present.update(found)
        short = [f"{n} < {p} along axis {a}" for a, (n, p)
                 in enumerate(zip(item["working_shape"], spec.sample_size)) if n < p]
        if short:
            small.append((case["image"], ", ".join(short)))
    grid = "x".join(f"{s:g}" for s in spec.spacing)
    for image, short in small[:NAMED_NOTES]:
        log.warning("%s: smaller than a patch at %s mm (%s); padded with air, its label with "
                    "background, as inference pads it", image, grid, short)
    if len(small) > NAMED_NOTES:
        log.warning("%d more training cases are smaller than a patch at %s mm; padded the same "
                    "way", len(small) - NAMED_NOTES, grid)
    for label_id, name in labels.items():
        if label_id not in present:
            log.warning("class %r (%d) is in no training case; it is kept, and its validation "
                        "Dice is NaN, not 0", name, label_id)


def prepare_cases(cfg: TrainConfig, spec: NetworkInput, train_cases: list[dict],
                  val_cases: list[dict], labels: dict[int, str]):
    """Cached, checked training cases as a loader of patches; validation cases (rank 0 only)
    on the working grid, as inference will see them."""
    num_classes = len(labels)
    train_items = cache_cases(train_cases, training_cache_transforms(spec, num_classes),
                              cfg.cache_dir, cache_key("train", spec, num_classes))
    check_training_data(train_cases, train_items, labels, spec)
    val_items = (cache_cases(val_cases, validation_cache_transforms(spec), cfg.cache_dir,
                             cache_key("validation", spec)) if is_main_process() else [])
    return make_loader(train_items, cfg, spec, num_classes), val_items


def make_loader(items: Sequence[dict], cfg: TrainConfig, spec: NetworkInput, num_classes: int):
    """An epoch's worth of batches (iters_per_epoch) of random class-balanced patches."""
    dataset = Dataset(items, training_sample_transforms(
        spec, num_classes, cfg.affine_prob, cfg.augment, cfg.contrast_prob))
    sampler = torch.utils.data.RandomSampler(
        dataset, replacement=True, num_samples=cfg.iters_per_epoch * cfg.batch_size,
        generator=torch.Generator())
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                      num_workers=cfg.num_workers, collate_fn=list_data_collate)


def reseed_epoch(loader, seed: int, epoch: int, rank: int) -> None:
    """Make an epoch's patches a function of (seed, epoch, rank) alone.

    So a run resumed at an epoch boundary draws exactly the patches the uninterrupted run drew,
    and each torchrun rank draws different ones.
    """
    epoch_seed = (seed * 1_000_003 + epoch * 1_009 + rank) % 2**31
    loader.sampler.generator.manual_seed(epoch_seed)
    loader.dataset.transform.set_random_state(seed=epoch_seed)


def validate(predictor: Predictor, items: Sequence[dict], num_classes: int) -> np.ndarray:
    """Per-organ Dice (background excluded, NaN where a case lacks the organ) on the working
    grid, predicted by inference's own code: normalisation, padding and sliding window."""
    # compute_dice, not DiceMetric: the latter all-gathers across ranks, and only rank 0 validates.
    scores = []
    predictor.model.eval()
    for item in items:
        probs = predictor.probabilities(item["image"])
        pred = one_hot(probs.argmax(0)[None, None].cpu(), num_classes)
        ref = one_hot(item["label"].as_subclass(torch.Tensor)[None].long(), num_classes)
        scores.append(compute_dice(pred, ref, include_background=False, ignore_empty=True))
    predictor.model.train()
    with warnings.catch_warnings():  # an organ no validation case has: NaN, said at the start
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(torch.cat(scores).numpy(), axis=0)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or nnU-Net's SGD with Nesterov momentum 0.99; learning_rate sets their rate."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.99, nesterov=True,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise MedsegError(f"optimizer {cfg.optimizer!r}: choose adamw or sgd")


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """nnU-Net's poly decay (exponent 0.9), or linear warm-up then cosine decay (Auto3DSeg's)."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_iters) / max(1, total - cfg.warmup_iters)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (1 - step / total) ** 0.9


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
    choices = {"augment": AUGMENTATIONS, "schedule": ("poly", "cosine"),
               "optimizer": ("adamw", "sgd"), "precision": PRECISIONS}
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


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run one training job (one rank of it under torchrun); writes best.pt, last.pt, log.csv.

    A folder that holds a run is continued (resume) or replaced (overwrite), never silently
    mixed with a new one.
    """
    start = time.perf_counter()
    out = Path(cfg.output)
    cases, labels = load_manifest(Path(cfg.manifest))
    num_classes = len(labels)
    check_config(cfg, num_classes)
    check_writable(out)
    if cfg.cache_dir:
        check_writable(Path(cfg.cache_dir))
    claim_run_folder(out, resume, overwrite)
    for case in cases:
        check_case_files(case)
    device = resolve_device(local_device(cfg.device))
    cfg = dataclasses.replace(cfg, precision=training_precision(cfg.precision, device))
    cfg, plan = planned_config(cfg, device)
    init_process_group(device)
    rank, world = rank_and_world()
    set_determinism(cfg.seed)
    # Built before caching, so bad model or loss settings fail at once.
    model = build_model(cfg.model, in_channels(cfg), num_classes, spatial_dims=cfg.spatial_dims,
                        **cfg.model_kwargs).to(device)
    loss_fn = build_loss(cfg.loss, **cfg.loss_kwargs)
    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed, cfg.fold, cfg.folds)
    if is_main_process():
        print(f"training on {len(train_cases)} cases, validating on {len(val_cases)}, "
              f"device {device}, {world} rank(s)")

    spec = network_input(cfg)
    loader, val_items = prepare_cases(cfg, spec, train_cases, val_cases, labels)
    validator = Predictor.for_network(model, spec, labels, InferOptions(
        device=str(device), overlap=cfg.overlap, precision=cfg.precision))

    optimizer = make_optimizer(model, cfg)
    # fp16 needs loss scaling against underflow; with any other precision the scaler is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    meta = run_metadata(cfg, labels, spec, train_cases, val_cases)
    done, best = (resume_from(out / "last.pt", model, optimizer, scaler, meta) if resume
                  else (0, -math.inf))
    network = ddp_wrap(model, device)
    if cfg.compile:  # `model` keeps the parameters, so checkpoints have no "_orig_mod." names
        network = torch.compile(network)
    metrics_log = None
    if is_main_process():
        write_run_folder(out, meta, plan)
        metrics_log = MetricsLog(out, [labels[i] for i in range(1, num_classes)], keep=done)

    for epoch in range(done + 1, cfg.epochs + 1):
        reseed_epoch(loader, cfg.seed, epoch, rank)
        loss = train_epoch(network, loader, loss_fn, optimizer, scaler, cfg,
                           (epoch - 1) * cfg.iters_per_epoch, device,
                           desc=f"epoch {epoch}/{cfg.epochs}")
        if is_main_process():
            dice = None
            if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
                dice = validate(validator, val_items, num_classes)
                if np.nanmean(dice) > best:
                    best = float(np.nanmean(dice))
                    save_checkpoint(out / "best.pt", model, meta, epoch=epoch, val_dice=best)
            save_checkpoint(out / "last.pt", model, meta, epoch=epoch, best=best,
                            optimizer=optimizer.state_dict(), scaler=scaler.state_dict())
            metrics_log.write(epoch, loss, dice, time.perf_counter() - start)
        barrier()
    if is_main_process():
        metrics_log.close()
        training_curves(out / "log.csv", out / "training_curves.png")
    report_ranks(model, loader, cfg.seed)
    shutdown()
    return {"best_val_dice": best, "seconds": time.perf_counter() - start}


# What a run writes into its folder; any of them there means the folder holds a run.
RUN_FILES = ("best.pt", "last.pt", "log.csv", "config.json", "split.json", "plan.json",
             "training_curves.png")


def claim_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A run folder is started empty, continued with resume, or replaced with overwrite."""
    if resume and overwrite:
        raise MedsegError("--resume continues a run and --overwrite replaces it: give one of them")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if resume or not found:
        return
    if not overwrite:
        raise MedsegError(f"{out}: holds a training run ({', '.join(found)}); add --resume to "
                          "continue it, or --overwrite to start again and replace it")
    if is_main_process():
        print(f"replacing the training run in {out}", flush=True)
        for name in found:
            check_replaceable(out / name)
            (out / name).unlink()
        shutil.rmtree(out / "tensorboard", ignore_errors=True)


def planned_config(cfg: TrainConfig, device: torch.device) -> tuple[TrainConfig, dict | None]:
    """The config with every unset planned setting filled: from cfg.plan if given, and what
    that leaves unset from a plan made now from the data (printed in one line); returns the
    plan used too."""
    from medseg.training.planning import PLANNED, apply_plan, make_plan, plan_summary, read_plan

    plan = read_plan(Path(cfg.plan)) if cfg.plan else None
    if plan is not None:
        cfg = apply_plan(cfg, plan)
    if any(getattr(cfg, key) is None for key in PLANNED):  # no plan, or one lacking keys
        made = make_plan(Path(cfg.manifest), device=device.type, seed=cfg.seed)
        if is_main_process():
            print(plan_summary(made), flush=True)
        cfg = apply_plan(cfg, made)
        plan = {**made, **(plan or {})}
    if plan is None:
        return cfg, None
    overridden = [k for k in PLANNED if k in plan and getattr(cfg, k) != _as_config(plan[k])]
    if overridden and is_main_process():
        print(f"plan: {', '.join(overridden)} set by the recipe or command line", flush=True)
    return cfg, plan


def _as_config(value):
    return tuple(value) if isinstance(value, list) else value


def write_run_folder(out: Path, meta: dict, plan: dict | None) -> None:
    """The run's settings, its train/validation split and the plan it used, beside its weights."""
    write_json(meta, out / "config.json")
    write_json(meta["split"], out / "split.json")
    if plan is not None:
        write_json(plan, out / "plan.json")


def resume_from(path: Path, model, optimizer, scaler, meta: dict) -> tuple[int, float]:
    """Restore weights, optimiser and loss-scaler state from last.pt; returns (epochs done, best
    Dice). The data and augmentation streams need no state: they are seeded per epoch."""
    if not path.exists():
        raise MedsegError(f"{path}: nothing to resume (no last.pt in the run folder); give the "
                          "run's folder as --output, or drop --resume to start afresh")
    payload = load_checkpoint(path)
    saved, now = payload["config"]["train"], meta["train"]
    free = ("epochs", "output", "compile", "num_workers", "cache_dir")  # safe to change
    changed = sorted(k for k in now if k not in free and saved.get(k, now[k]) != now[k])
    if changed:
        raise MedsegError(f"{path}: the run was started with other settings ({', '.join(changed)})"
                          "; resume with the same ones, or start a new output folder")
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    if payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    print(f"resuming after epoch {payload['epoch']}", flush=True)
    return int(payload["epoch"]), float(payload.get("best", -math.inf))


def ddp_wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged across ranks), else the model."""
    if not torch.distributed.is_initialized():
        return model
    if device.type == "cuda":  # SyncBatchNorm runs on GPUs only; instance norm needs none
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return torch.nn.parallel.DistributedDataParallel(model)


def report_ranks(model: torch.nn.Module, loader, seed: int) -> None:
    """Under torchrun, print per-rank digests of the first batch trained on and final weights."""
    rank, world = rank_and_world()
    if world == 1:
        return
    reseed_epoch(loader, seed, 1, rank)
    first = next(iter(loader))["image"]
    weights = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
    digests = all_gather((digest(first), digest(weights)))
    if is_main_process():
        for rank, (data, final) in enumerate(digests):
            print(f"rank {rank}: data {data} weights {final}", flush=True)


def digest(tensor: torch.Tensor) -> str:
    """A short fingerprint of a tensor's exact values."""
    return hashlib.sha256(tensor.float().numpy().tobytes()).hexdigest()[:16]


def train_epoch(model, loader, loss_fn, optimizer, scaler, cfg: TrainConfig, first_step: int,
                device, desc: str) -> float:
    """One pass over the loader with LR decay, mixed precision and gradient clipping; returns
    the mean loss."""
    total_steps, losses = cfg.epochs * cfg.iters_per_epoch, []
    for step, batch in enumerate(tqdm(loader, desc=desc, leave=False), start=first_step):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, total_steps)
        image, label = batch["image"].to(device), batch["label"].to(device)
        with autocast(device, cfg.precision):
            loss = loss_fn(model(image), label)  # also a list with deep supervision
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    return float(np.mean(losses))


def run_metadata(cfg: TrainConfig, labels: dict, spec: NetworkInput, train_cases,
                 val_cases) -> dict:
    """What inference needs to reproduce preprocessing, in plain JSON types."""
    config = json.loads(json.dumps(dataclasses.asdict(cfg)))
    return {
        **spec.to_config(),
        "train": config,
        "model": {"name": cfg.model, "kwargs": cfg.model_kwargs, "in_channels": in_channels(cfg),
                  "spatial_dims": cfg.spatial_dims, "context_slices": cfg.context_slices},
        "loss": {"name": cfg.loss, **cfg.loss_kwargs},
        "labels": {str(k): v for k, v in labels.items()},
        "split": {"train": [c["image"] for c in train_cases],
                  "validation": [c["image"] for c in val_cases]},
    }


class MetricsLog:
    """Per epoch: a log.csv row (loss, per-organ validation Dice, time) and TensorBoard scalars."""

    def __init__(self, out: Path, organs: list[str], keep: int = 0):
        """Start the log, keeping the rows of the first `keep` epochs (a resumed run)."""
        from torch.utils.tensorboard import SummaryWriter

        path = out / "log.csv"
        self.path, self.organs = path, organs
        self.board = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=keep + 1)
        kept = []
        if keep and path.exists():
            with open(path, newline="") as f:
                kept = [row for row in list(csv.reader(f))[1:] if int(row[0]) <= keep]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "loss", "val_mean_dice", *organs, "seconds"])
            writer.writerows(kept)

    def write(self, epoch: int, loss: float, dice, seconds: float) -> None:
        cells = [""] * (len(self.organs) + 1) if dice is None else [
            f"{np.nanmean(dice):.4f}", *(f"{d:.4f}" for d in dice)]
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([epoch, f"{loss:.4f}", *cells, f"{seconds:.1f}"])
        self.board.add_scalar("train/loss", loss, epoch)
        if dice is not None:
            self.board.add_scalar("val/mean_dice", float(np.nanmean(dice)), epoch)
            for organ, value in zip(self.organs, dice):
                self.board.add_scalar(f"val_dice/{organ}", float(value), epoch)
        shown = "" if dice is None else f"  val dice {np.nanmean(dice):.3f}"
        print(f"epoch {epoch}: loss {loss:.4f}{shown}  ({seconds:.0f}s)", flush=True)

    def close(self) -> None:
        """Flush TensorBoard's event file."""
        self.board.close()
