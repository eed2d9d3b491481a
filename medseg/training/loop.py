"""Training: manifest -> cached, resampled cases -> 2D or 3D patches -> model -> checkpoints."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from monai.utils import set_determinism
from tqdm import tqdm

from medseg.data.files import check_writable, make_writable_folder, read_json
from medseg.data.manifest import check_case_files, load_manifest
from medseg.distributed import (
    barrier,
    init_process_group,
    is_main_process,
    local_device,
    rank_and_world,
    shutdown,
)
from medseg.models.medseg_run import MedsegPredictor
from medseg.models.options import EngineOptions
from medseg.nets.checkpoint import save_checkpoint
from medseg.nets.registry import build_network, canonical_model
from medseg.runtime import autocast, resolve_device, training_precision
from medseg.training.cases import network_input, prepare_cases, reseed_epoch, split_cases
from medseg.training.config import TrainConfig, check_config, in_channels
from medseg.training.ddp import ddp_wrap, report_ranks
from medseg.training.init_from import (
    describe_start,
    read_init_source,
    transfer_weights,
    with_source_settings,
)
from medseg.training.log import MetricsLog, training_curves
from medseg.training.losses import build_loss, merge_unannotated
from medseg.training.optim import learning_rate, make_optimizer
from medseg.training.planning import planned_config
from medseg.training.run_folder import (
    claim_run_folder,
    resume_from,
    run_metadata,
    write_run_folder,
)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run one training job (one rank of it under torchrun); writes best.pt, last.pt, log.csv.

    A folder that holds a run is continued (resume) or replaced (overwrite), never silently
    mixed with a new one.
    """
    start = time.perf_counter()
    out = Path(cfg.output)
    cases, labels = load_manifest(Path(cfg.manifest))
    source = read_init_source(cfg.init_from) if cfg.init_from else None
    if source is not None:  # its network, frame, and (unless set) spacing, patch, intensity
        cfg = with_source_settings(cfg, source)
    num_classes = len(labels)
    check_config(cfg, num_classes)
    check_writable(out)
    if cfg.cache_dir:
        make_writable_folder(Path(cfg.cache_dir))
    claim_run_folder(out, resume, overwrite)
    for case in cases:
        check_case_files(case)
    device = resolve_device(local_device(cfg.device))
    cfg = dataclasses.replace(cfg, model=canonical_model(cfg.model),
                              precision=training_precision(cfg.precision, device))
    cfg, plan = planned_config(cfg, device.type)
    init_process_group(device)
    rank, world = rank_and_world()
    set_determinism(cfg.seed)
    # Built before caching, so bad model or loss settings fail at once.
    def network_for(classes: int) -> torch.nn.Module:
        return build_network(cfg.model, in_channels(cfg), classes, spatial_dims=cfg.spatial_dims,
                             **cfg.model_kwargs)

    model = network_for(num_classes)
    started_from = (transfer_weights(model, source, labels, network_for)
                    if source is not None and not resume else None)
    model = model.to(device)
    loss_fn = build_loss(cfg.loss, **cfg.loss_kwargs)
    train_cases, val_cases = split_cases(cases, cfg.val_fraction, cfg.seed, cfg.fold, cfg.folds)
    if is_main_process():
        print(f"training on {len(train_cases)} cases, validating on {len(val_cases)}, "
              f"device {device}, {world} rank(s)")

    spec = network_input(cfg)
    loader, val_items = prepare_cases(cfg, spec, train_cases, val_cases, labels)
    validator = MedsegPredictor.for_network(model, spec, labels, EngineOptions(
        device=str(device), overlap=cfg.overlap, precision=cfg.precision), device)

    optimizer = make_optimizer(model, cfg)
    # fp16 needs loss scaling against underflow; with any other precision the scaler is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    meta = run_metadata(cfg, labels, spec, train_cases, val_cases)
    if source is not None:  # where the weights came from (kept when resuming)
        recorded = out / "config.json"
        meta["init_from"] = started_from or (read_json(recorded).get("init_from")
                                             if recorded.exists() else None)
    done, best = (resume_from(out / "last.pt", model, optimizer, scaler, meta) if resume
                  else (0, -math.inf))
    network = ddp_wrap(model, device)
    if cfg.compile:  # `model` keeps the parameters, so checkpoints have no "_orig_mod." names
        network = torch.compile(network)
    metrics_log = None
    if is_main_process():
        if started_from:
            print(describe_start(started_from), flush=True)
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
    return {"best_val_dice": best, "seconds": time.perf_counter() - start, "output": str(out)}


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
            logits = model(image)  # also a list with deep supervision
            if "annotated" in batch:  # combined data sets: partial labels
                logits = merge_unannotated(logits, batch["annotated"])
            loss = loss_fn(logits, label)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    return float(np.mean(losses))


def validate(predictor: MedsegPredictor, items: Sequence[dict], num_classes: int) -> np.ndarray:
    """Per-organ Dice (background excluded, NaN where a case lacks the organ) on the working
    grid, predicted by inference's own code: normalisation, padding and sliding window."""
    # compute_dice, not DiceMetric: the latter all-gathers across ranks, and only rank 0 validates.
    scores = []
    predictor.network.eval()
    for item in items:
        probs = predictor.probabilities(item["image"])
        pred = one_hot(probs.argmax(0)[None, None].cpu(), num_classes)
        ref = one_hot(item["label"].as_subclass(torch.Tensor)[None].long(), num_classes)
        scores.append(compute_dice(pred, ref, include_background=False, ignore_empty=True))
    predictor.network.train()
    with warnings.catch_warnings():  # an organ no validation case has: NaN, said at the start
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(torch.cat(scores).numpy(), axis=0)
