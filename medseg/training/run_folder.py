"""A run folder: claimed for a new run, continued, or replaced; what it holds; resuming from it."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

from medseg.data.files import check_replaceable, read_json, write_json
from medseg.data.network_input import NetworkInput
from medseg.distributed import is_main_process
from medseg.errors import MedsegError
from medseg.nets.checkpoint import load_checkpoint
from medseg.nets.registry import canonical_model
from medseg.training.config import TrainConfig, in_channels

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
    saved = {**saved, "model": canonical_model(saved.get("model", now["model"]))}  # old names
    free = ("epochs", "output", "compile", "num_workers", "cache_dir")  # safe to change
    changed = sorted(k for k in now if k not in free and saved.get(k, now[k]) != now[k])
    if changed:
        raise MedsegError(f"{path}: the run was started with other settings ({', '.join(changed)})"
                          "; resume with the same ones, or start a new output folder")
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    if payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    print(f"resuming after epoch {payload['epoch']}, to epoch {now['epochs']}", flush=True)
    # config.json says the run was continued (a cross-validation rerun with more epochs, say),
    # not that it was trained for its epochs in one go.
    recorded = path.parent / "config.json"
    earlier = read_json(recorded).get("resumed", []) if recorded.is_file() else []
    meta["resumed"] = [*earlier, {"after_epoch": int(payload["epoch"]),
                                  "to_epoch": int(now["epochs"])}]
    return int(payload["epoch"]), float(payload.get("best", -math.inf))
