"""Planning: a data set's fingerprint, and the training plan derived from it.

nnU-Net's rules (median spacing with its anisotropy rule, foreground-percentile CT
normalisation, a patch no larger than the median scan, poolings only along axes long and fine
enough), with two changes for real scans: the patch is rounded *down* to the network's stride,
so a 20-slice scan is never padded to 32, and on a CPU the working spacing is coarsened until a
patch covers half the median scan at an affordable step. `medseg plan` writes the result;
`medseg train` makes one by itself when none is given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from medseg.data.files import read_json
from medseg.data.geometry import ras_shape_and_spacing
from medseg.data.manifest import check_case_files, load_manifest
from medseg.data.scan_checks import AIR_BELOW_HU, check_label_ids
from medseg.distributed import is_main_process
from medseg.errors import MedsegError
from medseg.nets.registry import DEFAULT_NETWORK, canonical_model
from medseg.training.config import TrainConfig

ANISOTROPY_RATIO = 3.0  # nnU-Net: beyond this, the coarse axis keeps a finer target spacing
# Training memory of the default U-Net, bytes per patch voxel per base-channel (activations,
# gradients and Adam state; fp32). Calibrated so 128^3 x 2 at 32 base channels is ~8.6 GB, close
# to nnU-Net's figure for its 3d_fullres U-Net.
BYTES_PER_VOXEL_PER_CHANNEL = 64
PLAN_NAME = "plan.json"
MIN_FEATURE_MAP = 4  # nnU-Net: the coarsest feature map keeps at least 4 voxels per axis
MAX_POOLINGS = 4  # the default network's five levels
BASE_CHANNELS = {"cpu": 16, "cuda": 32}
MAX_CHANNELS = 320
# On a CPU: the voxels of one step's batch (2 x 80 x 64 x 48, the demo recipe's, measured on
# 2 cores at about 0.3 s per step), and the share of the median scan a patch should cover.
CPU_BATCH_VOXELS = 2 * 80 * 64 * 48
CPU_COVERAGE = 0.5
SPACING_STEP = 1.25  # how fast the CPU plan coarsens the working spacing
# Iodine in the arterial phase takes the aorta to 250-450 HU: a clip below that would make it
# look like unenhanced soft tissue to a model trained on another phase.
CONTRAST_CEILING_HU = 500.0
MIN_STD = 1e-3  # a constant foreground must not divide by zero


def ct_normalization(foreground_hu: np.ndarray,
                     ceiling_hu: float | None = CONTRAST_CEILING_HU) -> dict:
    """The CT window and z-score of labelled voxels: the one place they are computed.

    Clip to the 0.5 and 99.5 percentiles (the upper one raised to at least ceiling_hu, so
    contrast-filled vessels keep their brightness), then the clipped values' mean and std.
    """
    voxels = np.asarray(foreground_hu, dtype=np.float64)
    if voxels.size == 0:
        raise MedsegError("none of the training labels has an organ voxel; check the "
                          "manifest's label paths")
    lo, hi = np.percentile(voxels, [0.5, 99.5])
    if ceiling_hu is not None:
        hi = max(hi, ceiling_hu)
    clipped = np.clip(voxels, lo, hi)
    return {"clip": [float(lo), float(hi)], "mean": float(clipped.mean()),
            "std": float(max(clipped.std(), MIN_STD))}


def case_fingerprint(case: dict, num_classes: int, rng: np.random.Generator,
                     samples: int = 10_000) -> dict:
    """RAS spacing and shape, a sample of labelled-voxel HU, class voxel counts, lowest HU."""
    from medseg.data.transforms import DataSetLabelsd, LoadScand

    # A case of combined data sets is checked against, and moved onto, the combined map.
    loaded = DataSetLabelsd("label")(LoadScand(("image", "label"))(dict(case)))
    hu = np.asarray(loaded["image"][0])
    labels = np.asarray(loaded["label"][0]).astype(np.uint8)  # whole ids 0..255 (check_label)
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    check_label_ids(np.flatnonzero(counts).tolist(), num_classes, case["label"])
    foreground = hu[labels > 0]
    if foreground.size > samples:
        foreground = rng.choice(foreground, samples, replace=False)
    shape, spacing = ras_shape_and_spacing(hu.shape, np.asarray(loaded["image"].affine))
    return {
        "image": case["image"],
        "spacing": spacing,
        "shape": shape,
        "foreground_hu": foreground,
        "min_hu": float(hu.min()),
        "class_voxels": counts.tolist(),
    }


def target_spacing(spacings: np.ndarray) -> list[float]:
    """Median spacing; for anisotropic data the coarse axis takes its 10th percentile instead."""
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    if target[worst] / target.min() > ANISOTROPY_RATIO:
        target[worst] = np.percentile(spacings[:, worst], 10)
    return [float(s) for s in target]


def cpu_spacing(spacing, median_extent_mm, batch_voxels: int) -> list[float]:
    """Coarsen the finest axes until a patch of the budget covers CPU_COVERAGE of the median scan.

    A GPU plan at 1 mm gives patches of a few hundred thousand voxels times a deep network:
    seconds per step on a CPU. Coarser voxels keep the field of view a patch sees.
    """
    spacing = np.asarray(spacing, dtype=float)
    floor = spacing.min()
    patch_voxels = batch_voxels / 2
    while True:
        coarse = np.maximum(spacing, floor)
        if np.prod(np.asarray(median_extent_mm) / coarse) * CPU_COVERAGE <= patch_voxels:
            return [round(float(s), 3) for s in coarse]
        floor *= SPACING_STEP


def pooling_strides(shape, spacing, max_poolings: int = MAX_POOLINGS) -> list[list[int]]:
    """Per level, the stride along each axis (2: pooled, 1: kept), as nnU-Net plans them.

    An axis is pooled while its feature map stays at least MIN_FEATURE_MAP voxels and its
    spacing is less than twice the finest one, so a 12-slice axis is pooled once, not four times.
    """
    size, spacing = np.asarray(shape, dtype=float), np.asarray(spacing, dtype=float)
    levels = []
    for _ in range(max_poolings):
        long_enough = size >= 2 * MIN_FEATURE_MAP
        if not long_enough.any():
            break
        pool = long_enough & (spacing < 2 * spacing[long_enough].min())
        levels.append([2 if p else 1 for p in pool])
        size = np.where(pool, size // 2, size)
        spacing = np.where(pool, spacing * 2, spacing)
    return levels or [[1, 1, 1]]


def axis_strides(levels: list[list[int]]) -> list[int]:
    """The total stride along each axis: patches are multiples of it."""
    return [int(np.prod([level[a] for level in levels])) for a in range(len(levels[0]))]


def patch_and_strides(median_shape, spacing, batch_voxels: float, min_batch: int = 2
                      ) -> tuple[list[int], list[list[int]]]:
    """The largest patch, no larger than the median scan, whose batch fits batch_voxels.

    Each axis is rounded down to its stride; the side longest in millimetres shrinks first.
    """
    patch = np.maximum(np.floor(np.asarray(median_shape, dtype=float)), 1).astype(int)
    while True:
        levels = pooling_strides(patch, spacing)
        stride = np.array(axis_strides(levels))
        fitted = np.maximum(patch // stride * stride, 1)
        if np.prod(fitted) * min_batch <= batch_voxels or fitted.max() <= 8:
            return [int(p) for p in fitted], levels
        longest = int(np.argmax(fitted * np.asarray(spacing)))
        patch = fitted.copy()
        patch[longest] = max(1, fitted[longest] - stride[longest])


def device_budget(device: str, memory_gb: float | None, base_channels: int) -> tuple[float, str]:
    """Voxels one training batch may hold on this device, and why."""
    if device == "cpu":
        return CPU_BATCH_VOXELS, f"cpu: a step of at most {CPU_BATCH_VOXELS:,} voxels"
    if memory_gb is None:
        import torch

        memory_gb = 0.8 * torch.cuda.get_device_properties(0).total_memory / 1024**3
    budget = memory_gb * 1024**3 / (BYTES_PER_VOXEL_PER_CHANNEL * base_channels)
    return budget, f"{device}: {memory_gb:.1f} GB for a training step"


def unet_kwargs(levels: list[list[int]], base_channels: int) -> dict:
    """The default network (resunet) with one level per pooling and these strides."""
    channels = [min(base_channels * 2**i, MAX_CHANNELS) for i in range(len(levels) + 1)]
    return {"channels": channels, "strides": levels}


def make_plan(manifest: Path, device: str = "cpu", memory_gb: float | None = None,
              seed: int = 0) -> dict:
    """Fingerprint every training case and derive spacing, normalisation, patch, batch and net."""
    cases, labels = load_manifest(Path(manifest))
    for case in cases:
        check_case_files(case)
    rng = np.random.default_rng(seed)
    prints = [case_fingerprint(c, len(labels), rng) for c in cases]
    spacings = np.array([p["spacing"] for p in prints])
    extents = np.array([p["shape"] for p in prints]) * spacings
    nnunet_spacing = target_spacing(spacings)
    base = BASE_CHANNELS["cpu" if device == "cpu" else "cuda"]
    batch_voxels, budget_note = device_budget(device, memory_gb, base)
    spacing = (cpu_spacing(nnunet_spacing, np.median(extents, axis=0), batch_voxels)
               if device == "cpu" else nnunet_spacing)
    median_shape = np.median(extents, axis=0) / np.array(spacing)
    patch, levels = patch_and_strides(median_shape, spacing, batch_voxels)
    batch = 2 if device == "cpu" else int(np.clip(batch_voxels // np.prod(patch), 2, 8))
    hu = np.concatenate([p["foreground_hu"] for p in prints])
    class_voxels = np.sum([p["class_voxels"] for p in prints], axis=0)
    return {
        "spacing": spacing,
        "patch_size": patch,
        "batch_size": batch,
        "intensity": ct_normalization(hu),
        "model": DEFAULT_NETWORK,
        "model_kwargs": unet_kwargs(levels, base),
        "device": device,
        "budget": budget_note,
        "fingerprint": {
            "cases": len(cases),
            "median_spacing": np.median(spacings, axis=0).tolist(),
            "nnunet_spacing": nnunet_spacing,
            "median_shape_at_target": median_shape.round(1).tolist(),
            "foreground_hu_percentiles": dict(zip(
                ["p0.5", "p50", "p99.5"], np.percentile(hu, [0.5, 50, 99.5]).round(1).tolist())),
            "class_fraction": {labels[i]: float(class_voxels[i] / class_voxels.sum())
                               for i in range(len(labels))},
            "cases_without_air": [p["image"] for p in prints if p["min_hu"] > AIR_BELOW_HU],
        },
        "memory_budget_gb": memory_gb,
    }


def plan_summary(plan: dict) -> str:
    """One line: what the plan chose, and why."""
    def mm(values, sep="x"):
        return sep.join(f"{v:.3g}" for v in values)

    fp = plan["fingerprint"]
    spacing = f"spacing {mm(plan['spacing'])} mm"
    if plan["spacing"] != fp["nnunet_spacing"]:
        spacing += f" (coarsened from {mm(fp['nnunet_spacing'])} for {plan['budget']})"
    poolings = [sum(level[a] == 2 for level in plan["model_kwargs"]["strides"])
                for a in range(3)]
    lo, hi = plan["intensity"]["clip"]
    return (f"plan: {spacing}; patch {mm(plan['patch_size'])} (median scan "
            f"{mm(round(s) for s in fp['median_shape_at_target'])}), batch {plan['batch_size']}; "
            f"{plan['model']} {plan['model_kwargs']['channels'][0]} channels, poolings per axis "
            f"{mm(poolings, ',')}; CT clip {lo:.0f}..{hi:.0f} HU, z-score mean "
            f"{plan['intensity']['mean']:.0f} std {plan['intensity']['std']:.0f}")


def read_plan(path: Path) -> dict:
    """A plan written by `medseg plan` (or by `medseg train` into its run folder)."""
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path}: plan not found; make one with `medseg plan --manifest ...`, "
                          "or leave --plan out and training plans by itself")
    return read_json(path)


PLANNED = ("spacing", "patch_size", "batch_size", "intensity")


def apply_plan(config: TrainConfig, plan: dict, plan_path: str | None = None) -> TrainConfig:
    """A config with every planned setting it leaves unset (None) taken from plan.

    The default network's topology is planned for the final patch and spacing (which the
    recipe or command line may have set), for 3D runs of the model the plan is for, and only
    when the config sets no channels or strides of its own.
    """
    updates = {k: plan[k] for k in PLANNED if k in plan and getattr(config, k) is None}
    for key in ("spacing", "patch_size"):
        if key in updates:
            updates[key] = tuple(updates[key])
    if plan_path:
        updates["plan"] = plan_path
    config = dataclasses.replace(config, **updates)
    own = {"channels", "strides"} & set(config.model_kwargs)
    planned = plan.get("model_kwargs", {}).get("channels")
    same = _same_model(plan.get("model"), config.model)
    if same and planned and not own and config.spatial_dims == 3:
        levels = pooling_strides(config.patch_size, config.spacing)
        config = dataclasses.replace(config, model_kwargs={**config.model_kwargs,
                                                           **unet_kwargs(levels, planned[0])})
    return config


def _same_model(planned: str | None, chosen: str) -> bool:
    """Whether the plan's network is the run's, under current or old (alias) names."""
    return planned is not None and canonical_model(planned) == canonical_model(chosen)


def planned_config(cfg: TrainConfig, device: str) -> tuple[TrainConfig, dict | None]:
    """The config with every unset planned setting filled: from cfg.plan if given, and what
    that leaves unset from a plan made now from the data (printed in one line); returns the
    plan used too."""
    plan = read_plan(Path(cfg.plan)) if cfg.plan else None
    if plan is not None:
        cfg = apply_plan(cfg, plan)
    if any(getattr(cfg, key) is None for key in PLANNED):  # no plan, or one lacking keys
        made = make_plan(Path(cfg.manifest), device=device, seed=cfg.seed)
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
