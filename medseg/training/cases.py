"""Training cases: the train/validation split, resampled once into a cache, checked, and drawn
as random class-balanced patches."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, list_data_collate

from medseg.data.network_input import NetworkInput
from medseg.data.scan_checks import check_label_ids
from medseg.data.transforms import (
    CLASS_LOCATIONS,
    training_cache_transforms,
    training_sample_transforms,
    validation_cache_transforms,
)
from medseg.distributed import is_main_process
from medseg.errors import MedsegError
from medseg.training.config import TrainConfig

log = logging.getLogger("medseg")


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


def network_input(cfg: TrainConfig) -> NetworkInput:
    """What this run's network sees; its checkpoints carry it to inference."""
    return NetworkInput(spacing=tuple(cfg.spacing), intensity=cfg.intensity,
                        patch_size=tuple(cfg.patch_size), spatial_dims=cfg.spatial_dims,
                        context_slices=cfg.context_slices, orientation=cfg.orientation,
                        padding=cfg.padding)
